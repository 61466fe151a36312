/// <reference path="../pb_data/types.d.ts" />
// audit_log is append-only, for everyone, superusers included (issue 14): no update, no
// delete, and no row made by hand. Only Cairn's components write it: their requests carry
// the audit key (X-Cairn-Audit-Key), a random secret the launcher keeps in
// secrets/audit.key and gives PocketBase as CAIRN_AUDIT_KEY (cairn_common/audit_key.py).
// The one change allowed: PocketBase clearing `tenant` when the tenant is deleted (the
// relation does not cascade, so the rows outlive it).
// (Handlers run in their own isolated VM: everything they use is declared inside them.)

onRecordCreateRequest((e) => {
  const want = $os.getenv("CAIRN_AUDIT_KEY");
  const got = String((e.requestInfo().headers || {})["x_cairn_audit_key"] || "");
  if (want === "" || got !== want) {
    throw new ForbiddenError("audit_log rows are written by Cairn's components only; " +
      "they cannot be made by hand");
  }
  e.next();
}, "audit_log");

onRecordUpdate((e) => {
  const rec = e.record;
  const before = rec.original();
  const changed = [];
  for (const field of rec.collection().fields) {
    const name = field.getName();
    if (name === "updated") continue;
    if (toString(before.get(name)) !== toString(rec.get(name))) changed.push(name);
  }
  const tenantCleared = changed.length === 1 && changed[0] === "tenant" &&
    rec.getString("tenant") === "";
  if (changed.length > 0 && !tenantCleared) {
    throw new BadRequestError("audit_log rows cannot be changed: the history stays as " +
      "written (changed: " + changed.join(", ") + ")");
  }
  e.next();
}, "audit_log");

onRecordDelete((e) => {
  throw new BadRequestError("audit_log rows cannot be deleted: the history stays as written");
}, "audit_log");

// Through the API nothing changes a row, its tenant included (the exception above is for
// PocketBase's own unlinking of a deleted tenant, which makes no request).
onRecordUpdateRequest((e) => {
  throw new BadRequestError("audit_log rows cannot be changed: the history stays as written");
}, "audit_log");

// Nor can the collection itself be emptied, cut down or dropped through the API (the
// Admin UI's collection settings included). Migrations, which make no request, still can.
onCollectionUpdateRequest((e) => {
  if (e.collection && e.collection.name === "audit_log") {
    throw new BadRequestError("the audit_log collection is Cairn's history: its fields and " +
      "rules are changed only by Cairn's migrations");
  }
  e.next();
});

onCollectionDeleteRequest((e) => {
  if (e.collection && e.collection.name === "audit_log") {
    throw new BadRequestError("the audit_log collection is Cairn's history and cannot be " +
      "deleted");
  }
  e.next();
});
