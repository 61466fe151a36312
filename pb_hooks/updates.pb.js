/// <reference path="../pb_data/types.d.ts" />
// Updates without lost writes (SPEC §11: a disable or a deactivation must stick).
//
// PocketBase's record update is read-modify-write outside any transaction: it loads the
// row, applies the request body, and saves every column. Two updates at once (an admin
// disabling a device while the bridge writes its presence, a device writing its own key in
// a loop, a superuser deactivating a tenant while the bridge writes its account key) can
// therefore save a stale copy over the other's change: 11 of 40 concurrent pairs lost one
// on a device row here, `status: disabled` included. This hook re-reads the row inside a
// transaction and keeps only what the request sent on top of it; writes serialize in
// SQLite, so no change is lost. It also refuses to write a JWT onto a device that is
// disabled by then (the bridge signed it from an older copy of the row).
//
// Precondition header (any caller may send it; it only ever narrows the caller's own
// write): `X-Cairn-Unless-Status: disabled[,other...]` refuses the update with 409 when
// the row's status, read inside the same transaction, is one of the listed values. The
// bridge sends it on every device write that grants (status `active`, a new `nats_jwt`),
// so a grant computed from an older copy of the row can never flip a disable back.

// (Handlers run in their own isolated VM: everything they use is declared inside them.)
onRecordUpdateRequest((e) => {
  const UNLESS_STATUS = "X-Cairn-Unless-Status";
  const info = e.requestInfo();
  const body = info.body || {};
  const sent = Object.keys(body);
  // requestInfo() names headers in lower case with underscores
  const unless = String((info.headers || {})["x_cairn_unless_status"] || "").split(",")
    .map((s) => s.trim()).filter((s) => s !== "");
  const name = e.record.collection().name;
  // Password changes keep PocketBase's own path: the password field's value and the token
  // key are handled together by it (superusers only for devices and sidecars).
  if (sent.some((k) => k === "password" || k === "passwordConfirm" || k === "oldPassword")) {
    if (unless.length > 0) {
      const current = e.app.findRecordById(name, e.record.id);
      if (unless.includes(current.getString("status"))) {
        throw new ApiError(409, "the " + name + " record " + e.record.id + " is " +
          current.getString("status") + " now: update skipped (" + UNLESS_STATUS + ")");
      }
    }
    e.next();
    return;
  }
  const original = e.app;
  let failure = null;
  try {
    original.runInTransaction((txApp) => {
      const fresh = txApp.findRecordById(name, e.record.id);
      const status = fresh.getString("status");
      if (unless.length > 0 && unless.includes(status)) {
        failure = new ApiError(409, "the " + name + " record " + e.record.id + " is " +
          status + " now: update skipped (" + UNLESS_STATUS + ")");
        throw failure;
      }
      if (name === "devices" && sent.includes("nats_jwt") && e.record.getString("nats_jwt") !== ""
          && status === "disabled") {
        failure = new BadRequestError("device " + fresh.getString("code") +
          " is disabled: no NATS credentials are written to it");
        throw failure;
      }
      for (const field of e.record.collection().fields) {
        const key = field.getName();
        // a password is never copied (set() would hash the stored hash again); a
        // concurrent password change is a superuser's, and rare
        if (!sent.includes(key) && field.type() !== "password") {
          e.record.set(key, fresh.get(key));
        }
      }
      e.app = txApp;
      e.next();
    });
  } catch (err) {
    throw failure || err;
  } finally {
    e.app = original;
  }
}, "tenants", "memberships", "devices", "nats_users", "nats_roles", "commands", "rules",
   "sidecars");
