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

onRecordUpdateRequest((e) => {
  const body = e.requestInfo().body || {};
  const sent = Object.keys(body);
  // Password changes keep PocketBase's own path: the password field's value and the token
  // key are handled together by it (superusers only for devices and sidecars).
  if (sent.some((k) => k === "password" || k === "passwordConfirm" || k === "oldPassword")) {
    e.next();
    return;
  }
  const name = e.record.collection().name;
  const original = e.app;
  let failure = null;
  try {
    original.runInTransaction((txApp) => {
      const fresh = txApp.findRecordById(name, e.record.id);
      if (name === "devices" && sent.includes("nats_jwt") && e.record.getString("nats_jwt") !== ""
          && fresh.getString("status") === "disabled") {
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
