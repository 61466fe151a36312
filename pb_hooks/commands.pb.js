/// <reference path="../pb_data/types.d.ts" />
// Commands an admin can trust (issue 14), for everyone, superusers included:
// - refused at once, with the reason under the field in the Admin UI: a payload that does
//   not fit its command (pb_hooks/lib/command_payloads.js: the bridge's own check and
//   words), a device that is not the tenant's, a disabled device;
// - `expires_at` filled at create (CAIRN_COMMAND_TTL seconds, default 3600: the bridge's
//   default for a row without one), so the row shows when it will expire;
// - a status only moves forward (queued -> sent -> succeeded | failed; queued -> failed |
//   expired), and `response`, `sent_at`, `completed_at`, `duration_ms` are written once
//   (results only with a final status); what was asked (command, payload, device, tenant,
//   requested_by, expires_at) no longer changes once sent, and while queued a change is
//   checked like a new command. Checked on every save (a model hook), against the row as
//   stored now, so no stale copy slips through.
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
  // a new command is queued: its results are the bridge's to write, later
  if (!["", "queued"].includes(rec.getString("status"))) {
    fail("status", "cairn_command_history", "a new command is queued; the bridge moves " +
      "it on (" + rec.getString("status") + " is not for a new command)");
  }
  for (const field of ["response", "sent_at", "completed_at"]) {
    const value = toString(rec.get(field));
    if (value !== "" && value !== "null") {
      fail(field, "cairn_command_history", field + " is written by the bridge when the " +
        "command is sent or finishes, not at create");
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
  // from -> the statuses it may become ("" is queued); a finished status never changes
  const NEXT = {
    "": ["", "queued", "sent", "failed", "expired"],
    queued: ["queued", "sent", "failed", "expired"],
    sent: ["sent", "succeeded", "failed"],
    succeeded: ["succeeded"], failed: ["failed"], expired: ["expired"],
  };
  const FINAL = ["succeeded", "failed", "expired"];
  const rec = e.record;
  let stored = null;
  try { stored = e.app.findRecordById("commands", rec.id); } catch (_) { stored = null; }
  if (!stored) { e.next(); return; }
  const before = stored.getString("status");
  const after = rec.getString("status");
  const empty = (v) => v === "" || v === "null";
  const refuse = (field, message) => {
    const data = {};
    data[field] = new ValidationError("cairn_command_history", message);
    throw new BadRequestError(message, data);
  };
  if (!(NEXT[before] || []).includes(after)) {
    refuse("status", FINAL.includes(before)
      ? "the command has finished (" + before + "): it stays " + before
      : "a command's status only moves forward: " + (before || "queued") + " cannot " +
        "become " + (after || "queued"));
  }
  for (const field of ["response", "sent_at", "completed_at", "duration_ms"]) {
    const was = toString(stored.get(field));
    const now = toString(rec.get(field));
    if (!empty(was) && was !== "0" && now !== was) {
      refuse(field, field + " is written once (by the bridge) and never changed");
    }
  }
  // results belong to a finished command, the send time to a sent one
  for (const field of ["response", "completed_at"]) {
    if (!FINAL.includes(after) && !empty(toString(rec.get(field)))) {
      refuse(field, field + " is written when the command finishes, not before");
    }
  }
  if (after === "" || after === "queued") {
    if (!empty(toString(rec.get("sent_at")))) {
      refuse("sent_at", "sent_at is written when the command is sent, not before");
    }
  }
  if (before !== "" && before !== "queued") {
    for (const field of ["command", "payload", "device", "tenant", "requested_by",
      "expires_at"]) {
      if (toString(stored.get(field)) !== toString(rec.get(field))) {
        refuse(field, "the command was sent: what it asked (" + field + ") stays as sent");
      }
    }
  } else {
    // still queued: a change of what it asks is checked like a new command
    const payloads = require(`${__hooks}/lib/command_payloads.js`);
    let payload = null;
    const raw = toString(rec.get("payload"));
    try { payload = raw === "" ? null : JSON.parse(raw); } catch (_) { payload = raw; }
    const found = payloads.problems(rec.getString("command"), payload);
    if (found.length) {
      const data = { payload: new ValidationError("cairn_payload", found.join("; ")) };
      throw new BadRequestError("The command was not changed: " + found.join("; "), data);
    }
    if (rec.getString("device") !== stored.getString("device") ||
        rec.getString("tenant") !== stored.getString("tenant")) {
      let device = null;
      try { device = e.app.findRecordById("devices", rec.getString("device")); } catch (_) {}
      if (!device || device.getString("tenant") !== rec.getString("tenant")) {
        const message = "this device is not one of the command's tenant's devices";
        throw new BadRequestError(message, {
          device: new ValidationError("cairn_device_tenant", message) });
      }
    }
  }
  e.next();
}, "commands");
