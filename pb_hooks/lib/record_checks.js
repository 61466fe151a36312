// Checks of tenants and devices made in PocketBase before a write, so that a mistake is
// refused at once with its reason under the field (issue 14). Tenant limits follow
// cairn_common/tenant_limits.json with the words of pb_hooks_bridge/limits.py, every
// problem listed. (A CommonJS module: hooks load it with require() inside handlers.)

const MIB = 1024 * 1024;
const PATTERNS = {
  slug: { re: /^[a-z0-9-]+$/, says: "^[a-z0-9-]+$: lower-case letters, digits and '-'" },
  code: { re: /^[a-z0-9-]{3,64}$/,
    says: "^[a-z0-9-]{3,64}$: 3 to 64 lower-case letters, digits and '-'" },
};
// global roles that are not for machines (services, people's viewers, the router)
const NOT_FOR_DEVICES = ["service", "viewer", "router"];

// Python's repr() of a decoded JSON value, for the bridge's words
function repr(value) {
  if (value === null || value === undefined) return "None";
  if (typeof value === "string") {
    return "'" + value.replace(/\\/g, "\\\\").replace(/'/g, "\\'") + "'";
  }
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "number") return String(value);
  return JSON.stringify(value);
}

function pyType(value) {
  if (Array.isArray(value)) return "list";
  if (typeof value === "string") return "str";
  if (typeof value === "boolean") return "bool";
  if (typeof value === "number") return Number.isInteger(value) ? "int" : "float";
  return "dict";
}

function jsonOf(raw) {
  const text = toString(raw);
  if (text === "" || text === "null") return null;
  try { return JSON.parse(text); } catch (_) { return text; }
}

// an integer PocketBase's JSON keeps exactly (limits.py: |value| <= 2**53 - 1)
function isInteger(value) {
  return typeof value === "number" && Number.isSafeInteger(value);
}

function limitsProblems(raw) {
  if (raw === null || raw === undefined || raw === "") raw = {};
  if (typeof raw !== "object" || Array.isArray(raw)) {
    return ["limits must be a JSON object, got " + pyType(raw)];
  }
  const path = __hooks + "/../cairn_common/tenant_limits.json";
  let spec;
  try {
    spec = JSON.parse(toString($os.readFile(path)));
  } catch (err) {  // closed, and said
    throw new ApiError(500, "Cairn's tenant limits cannot be read from " + path + ": " +
      String(err));
  }
  const known = Object.keys(spec.account).concat(Object.keys(spec.stream)).sort();
  const found = Object.keys(raw).filter((k) => !known.includes(k)).sort()
    .map((k) => "limits: unknown key " + repr(k) + " (known: " + known.join(", ") + ")");
  for (const key of Object.keys(spec.account)) {
    const rule = spec.account[key];
    const value = Object.prototype.hasOwnProperty.call(raw, key) ? raw[key] : rule.default;
    if (!isInteger(value)) {
      found.push("limits." + key + " must be an integer, got " + repr(value));
    } else if (value < -1) {
      found.push("limits." + key + " must be -1 (unlimited) or >= 0, got " + value);
    } else if (value === 0 && rule.nonzero) {
      found.push("limits." + key + " must not be 0: JetStream (telemetry) needs it");
    }
  }
  const streamRule = spec.stream.telemetry_max_bytes;
  const stream = Object.prototype.hasOwnProperty.call(raw, "telemetry_max_bytes")
    ? raw.telemetry_max_bytes : streamRule.default;
  if (!isInteger(stream) || stream < MIB) {
    found.push("limits.telemetry_max_bytes must be an integer >= " + MIB + " (1 MiB), got " +
      repr(stream));
  } else {
    const storage = Object.prototype.hasOwnProperty.call(raw, "jetstream_storage")
      ? raw.jetstream_storage : spec.account.jetstream_storage.default;
    if (isInteger(storage) && storage > 0 && stream > storage) {
      found.push("limits.telemetry_max_bytes (" + stream + ") must not exceed " +
        "limits.jetstream_storage (" + storage + ")");
    }
  }
  return found;
}

// Whether a write touches `field`: a create checks everything, an update what it sends
// (a row from before these checks can still be written by the bridge).
function touches(sent, field) {
  return sent === null || sent.includes(field);
}

// -> { field: message } of a tenant about to be written (`sent`: the update's keys, or
// null for a create)
function tenants(app, record, sent) {
  const errors = {};
  const slug = record.getString("slug");
  if (touches(sent, "slug") && slug !== "" && !PATTERNS.slug.re.test(slug)) {
    errors.slug = "slug " + repr(slug) + " must match " + PATTERNS.slug.says;
  } else if (sent !== null && sent.includes("slug")) {
    const before = record.original().getString("slug");
    if (before !== slug && countOf(app, "devices", "tenant = {:id}", { id: record.id }) > 0) {
      errors.slug = "slug cannot change while tenant " + before + " has devices: they log " +
        "in as " + before + "/<code> (move or delete them first)";
    }
  }
  const found = touches(sent, "limits") ? limitsProblems(jsonOf(record.get("limits"))) : [];
  if (found.length) errors.limits = found.join("; ");
  return errors;
}

// -> { field: message } of a device about to be written (`sent` as for tenants)
function devices(app, record, sent) {
  const errors = {};
  const code = record.getString("code");
  const tenant = record.getString("tenant");
  if (touches(sent, "code") && code !== "" && !PATTERNS.code.re.test(code)) {
    errors.code = "code " + repr(code) + " must match " + PATTERNS.code.says;
  } else if ((touches(sent, "code") || touches(sent, "tenant")) && code !== "" &&
      countOf(app, "devices", "tenant = {:tenant} && code = {:code} && id != {:id}",
        { tenant: tenant, code: code, id: record.id }) > 0) {
    errors.code = { code: "validation_not_unique", message: "code " + repr(code) +
      " is already used in tenant " + slugOf(app, tenant) +
      " (codes are unique in a tenant; another tenant may have it)" };
  }
  const role = record.getString("role");
  if (touches(sent, "role") && role !== "") {
    let rows = [];
    try {
      rows = app.findRecordsByFilter("nats_roles", "name = {:name} && (tenant = '' || " +
        "tenant = {:tenant})", "", 10, 0, { name: role, tenant: tenant });
    } catch (_) { rows = []; }
    const isGlobal = rows.length > 0 && rows.every((r) => r.getString("tenant") === "");
    if (rows.length === 0) {
      let names = [];
      try {
        names = app.findRecordsByFilter("nats_roles", "tenant = '' || tenant = {:tenant}",
          "name", 50, 0, { tenant: tenant }).map((r) => r.getString("name"))
          .filter((n) => !NOT_FOR_DEVICES.includes(n));
      } catch (_) { names = ["agent"]; }
      errors.role = "role " + repr(role) + " does not exist for this tenant (roles a " +
        "device may hold: " + (names.join(", ") || "agent") + "; empty means agent)";
    } else if (isGlobal && NOT_FOR_DEVICES.includes(role)) {
      errors.role = "role " + repr(role) + " is for services, not devices (a device holds " +
        "agent or a role of its tenant)";
    }
  }
  return errors;
}

function countOf(app, collection, filter, params) {
  try {
    return app.findRecordsByFilter(collection, filter, "", 1, 0, params).length;
  } catch (_) {
    return 0;
  }
}

function slugOf(app, tenantId) {
  try {
    return app.findRecordById("tenants", tenantId).getString("slug");
  } catch (_) {
    return "";
  }
}

// A device's login identity: <tenant slug>/<code> (empty without a tenant, which PocketBase
// then refuses as a missing relation).
function deviceLogin(app, record) {
  const slug = slugOf(app, record.getString("tenant"));
  return slug ? slug + "/" + record.getString("code") : "";
}


// Throws PocketBase's 400 with each message under its field (the Admin UI shows them there).
function refuse(errors) {
  const fields = Object.keys(errors);
  if (!fields.length) return;
  // an entry is its message, or { code, message } to keep PocketBase's own error code
  const said = (f) => (typeof errors[f] === "string" ? errors[f] : errors[f].message);
  const data = {};
  for (const f of fields) {
    const code = typeof errors[f] === "string" ? "cairn_" + f : errors[f].code;
    data[f] = new ValidationError(code, said(f));
  }
  throw new BadRequestError(fields.map(said).join("; "), data);
}

module.exports = { tenants, devices, deviceLogin, refuse, limitsProblems };
