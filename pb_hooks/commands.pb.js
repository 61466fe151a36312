/// <reference path="../pb_data/types.d.ts" />
// Commands an admin can trust (issue 14), for everyone, superusers included:
// - refused at once, with the reason under the field in the Admin UI: a payload that does
//   not fit its command (pb_hooks/lib/command_payloads.js: the bridge's own check and
//   words), a device that is not the tenant's, a disabled device;
// - `expires_at` filled at create (CAIRN_COMMAND_TTL seconds, default 3600: the bridge's
//   default for a row without one), so the row shows when it will expire;
// - a status only moves forward (queued -> sent -> succeeded | failed | expired), and
//   `response`, `sent_at`, `completed_at` are written once; what was asked (command,
//   payload, device, tenant) no longer changes once sent. Checked on every save (a model
//   hook), against the row as stored now, so no stale copy slips through.
// (Handlers run in their own isolated VM: everything they use is declared inside them.)

onRecordCreateRequest((e) => {
  const payloads = require(`${__hooks}/lib/command_payloads.js`);
  const rec = e.record;
  const tenantId = rec.getString("tenant");
  // (the create rule ran before this hook: a person here is a writer of this tenant)
  const errors = {};
  const words = [];
  const fail = (field, code, message) => {
    errors[field] = new ValidationError(code, message);
    words.push(message);
  };
  let payload = null;
  const raw = toString(rec.get("payload"));
  try { payload = raw === "" ? null : JSON.parse(raw); } catch (_) { payload = raw; }
  const found = payloads.problems(rec.getString("command"), payload);
  if (found.length) {
    fail(found[0].startsWith("unknown command") ? "command" : "payload", "cairn_payload",
      found.join("; "));
  }
  const deviceId = rec.getString("device");
  if (deviceId) {
    let device = null;
    try { device = e.app.findRecordById("devices", deviceId); } catch (_) { device = null; }
    if (!device || device.getString("tenant") !== tenantId) {
      fail("device", "cairn_device_tenant", "this device is not one of the command's " +
        "tenant's devices: pick one of its devices (or the device's own tenant)");
    } else if (device.getString("status") === "disabled") {
      fail("device", "cairn_device_disabled", "device " + device.getString("code") +
        " is disabled: enable it before sending it commands");
    }
  }
  if (words.length) {
    throw new BadRequestError("The command was not created: " + words.join("; "), errors);
  }
  if (rec.getString("expires_at") === "") {
    let ttl = parseInt($os.getenv("CAIRN_COMMAND_TTL") || "3600", 10);
    if (!(ttl > 0)) ttl = 3600;
    rec.set("expires_at", new Date(Date.now() + ttl * 1000).toISOString().replace("T", " "));
  }
  e.next();
}, "commands");

onRecordUpdate((e) => {
  const RANK = { "": 0, queued: 0, sent: 1, succeeded: 2, failed: 2, expired: 2 };
  const rec = e.record;
  let stored = null;
  try { stored = e.app.findRecordById("commands", rec.id); } catch (_) { stored = null; }
  if (!stored) { e.next(); return; }
  const before = stored.getString("status");
  const after = rec.getString("status");
  const refuse = (field, message) => {
    const data = {};
    data[field] = new ValidationError("cairn_command_history", message);
    throw new BadRequestError(message, data);
  };
  if (RANK[after] < RANK[before]) {
    refuse("status", "a command's status only moves forward: it is " + before +
      ", it cannot become " + (after || "queued") + " again");
  }
  if (RANK[before] === 2 && after !== before) {
    refuse("status", "the command has finished (" + before + "): it stays " + before);
  }
  for (const field of ["response", "sent_at", "completed_at"]) {
    const was = toString(stored.get(field));
    const now = toString(rec.get(field));
    if (was !== "" && was !== "null" && now !== was) {
      refuse(field, field + " is written once (by the bridge) and never changed");
    }
  }
  if (RANK[before] >= 1) {
    for (const field of ["command", "payload", "device", "tenant"]) {
      if (toString(stored.get(field)) !== toString(rec.get(field))) {
        refuse(field, "the command was sent: what it asked (" + field + ") stays as sent");
      }
    }
  }
  e.next();
}, "commands");
