/// <reference path="../pb_data/types.d.ts" />
// Devices an admin can trust (issue 14):
// - enrolling fails fast, with the reason, when the device is disabled or its tenant is
//   inactive (the agent said only "no NATS credentials ... is cairn-bridge running?" after
//   15 s): the device's login is refused with the reason, which is also written to
//   `devices.error` so the Admin UI shows it. Told only when the secret is right (a wrong
//   secret changes nothing and learns nothing).
// - a device's role must exist (global, or the device's tenant's) and be one a device may
//   hold: the global service, viewer and router roles are for services, not machines;
// - a device code or tenant slug that breaks its pattern is refused with the pattern named
//   (PocketBase itself says only "Invalid value format."); a code is unique in its tenant,
//   and a device logs in as <tenant slug>/<code> (one made before codes were per tenant
//   also by its bare code: `bare_code_login`).
// (Handlers run in their own isolated VM: everything they use is declared inside them.)

onRecordAuthWithPasswordRequest((e) => {
  if (!e.record && e.identity.indexOf("/") < 0) {
    // a bare code: only a device made before codes were per tenant may use it (at most one
    // per code, pb_migrations/1764000008_device_login.js); never a pick by secret
    try {
      e.record = e.app.findFirstRecordByFilter("devices",
        "code = {:code} && bare_code_login = true", { code: e.identity });
    } catch (_) { e.record = null; }
  }
  const device = e.record;
  if (!device) { e.next(); return; }  // unknown login: PocketBase's own answer
  let why = "";
  if (device.getString("status") === "disabled") {
    why = "device " + device.getString("login") + " is disabled: an admin must set its " +
      "status back before it can enroll";
  } else {
    let tenant = null;
    try { tenant = e.app.findRecordById("tenants", device.getString("tenant")); } catch (_) {}
    if (tenant && !tenant.getBool("active")) {
      why = "tenant " + tenant.getString("slug") + " is inactive: an admin must switch it " +
        "to active before its devices can enroll";
    }
  }
  if (!why) { e.next(); return; }
  // the reason is told only to the holder of the secret (checked here: PocketBase's auth
  // rule would refuse a disabled device before any later hook, with no reason); a wrong
  // secret gets PocketBase's own answer, after the same single password check
  if (!device.validatePassword(e.password)) {
    throw new BadRequestError("Failed to authenticate.");
  }
  if (device.getString("error") !== why) {
    try {  // this one column only: a whole-row save could undo a disable made meanwhile
      e.app.db().newQuery("UPDATE devices SET error = {:error} WHERE id = {:id}")
        .bind({ error: why, id: device.id }).execute();
    } catch (err) {
      console.warn("devices.error not written", String(err));
    }
  }
  throw new ForbiddenError(why);
}, "devices");

// A device logs in as <tenant slug>/<code> (pb_migrations/1764000008_device_login.js): kept
// in step on every write, whoever makes it (REST, batch, the Admin UI, a hook); nobody
// grants a bare-code login by hand.
onRecordCreate((e) => {
  const check = require(`${__hooks}/lib/record_checks.js`);
  e.record.set("login", check.deviceLogin(e.app, e.record));
  e.record.set("bare_code_login", false);  // only the migration gives it
  e.next();
}, "devices");

onRecordUpdate((e) => {
  const before = e.record.original();
  const same = before.getString("code") === e.record.getString("code") &&
    before.getString("tenant") === e.record.getString("tenant");
  // the slug lookup only when the login could change: a tenant's slug is frozen while it
  // has devices, and this runs on every write (the bridge's status, key and JWT writes)
  if (!same || before.getString("login") !== e.record.getString("login")) {
    const check = require(`${__hooks}/lib/record_checks.js`);
    e.record.set("login", check.deviceLogin(e.app, e.record));
  }
  e.record.set("bare_code_login", same && before.getBool("bare_code_login"));
  e.next();
}, "devices");

onRecordCreateRequest((e) => {
  const check = require(`${__hooks}/lib/record_checks.js`);
  check.refuse(check.devices(e.app, e.record, null));
  e.next();
}, "devices");

onRecordUpdateRequest((e) => {
  const check = require(`${__hooks}/lib/record_checks.js`);
  check.refuse(check.devices(e.app, e.record, Object.keys(e.requestInfo().body || {})));
  e.next();
}, "devices");

onRecordCreateRequest((e) => {
  const check = require(`${__hooks}/lib/record_checks.js`);
  check.refuse(check.tenants(e.app, e.record, null));
  // a tenant made through the API is active unless the request says otherwise (the Admin
  // UI sends its switch either way; an inactive tenant's devices are told so at enroll)
  if (!Object.prototype.hasOwnProperty.call(e.requestInfo().body || {}, "active")) {
    e.record.set("active", true);
  }
  e.next();
}, "tenants");

onRecordUpdateRequest((e) => {
  const check = require(`${__hooks}/lib/record_checks.js`);
  check.refuse(check.tenants(e.app, e.record, Object.keys(e.requestInfo().body || {})));
  e.next();
}, "tenants");
