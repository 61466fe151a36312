// The payload check of pb_hooks_bridge/command_payloads.py, in PocketBase's JS: the same
// shapes (cairn_common/command_payloads.json, read here) and the same words, so a row is
// refused in the Admin UI with the message the bridge would have written on it.
// (A CommonJS module: hooks load it with require() inside their handlers.)

function jsonType(value) {
  if (value === null || value === undefined) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "boolean") return "boolean";
  if (typeof value === "number") return "number";
  if (typeof value === "string") return "string";
  return "object";
}

function fits(value, kind) {
  if (kind === "integer") return jsonType(value) === "number" && Number.isInteger(value);
  return jsonType(value) === kind;
}

function quote(name) {
  return "'" + String(name).replace(/\\/g, "\\\\").replace(/'/g, "\\'") + "'";
}

function shapes() {
  const path = __hooks + "/../cairn_common/command_payloads.json";
  try {
    return JSON.parse(toString($os.readFile(path))).commands;
  } catch (err) {  // closed, and said: nothing is checked against a missing shape
    throw new ApiError(500, "Cairn's command shapes cannot be read from " + path + ": " +
      String(err));
  }
}

function range(command, key, value, rule) {
  const unit = rule.unit ? " " + rule.unit : "";
  if (rule.items && !value.every((v) => fits(v, rule.items))) {
    return [command + ": " + key + " must be a list of " + rule.items + "s"];
  }
  if (rule.enum && !rule.enum.includes(value)) {
    return [command + ": " + key + " must be one of " + rule.enum.join(", ")];
  }
  if (rule.above !== undefined && !(rule.above < value && value <= rule.max)) {
    return [command + ": " + key + " must be above " + rule.above + " and at most " +
      rule.max + unit];
  }
  if (rule.min !== undefined && !(rule.min <= value && value <= rule.max)) {
    return [command + ": " + key + " must be between " + rule.min + " and " + rule.max + unit];
  }
  return [];
}

// Every reason the payload cannot be sent ([] when it can); `command` is known.
function problems(command, payload) {
  const all = shapes();
  if (!Object.prototype.hasOwnProperty.call(all, command)) {
    return ["unknown command " + quote(command) + " (known: " + Object.keys(all).sort()
      .join(", ") + ")"];
  }
  if (payload === null || payload === undefined || payload === "") payload = {};
  if (jsonType(payload) !== "object") {
    return ["payload must be a JSON object, got " + jsonType(payload)];
  }
  const fields = all[command];
  const found = Object.keys(payload).filter((k) => !Object.prototype.hasOwnProperty
    .call(fields, k)).sort().map((k) => command + ": unknown field " + quote(k));
  for (const key of Object.keys(fields)) {
    const rule = fields[key];
    if (!Object.prototype.hasOwnProperty.call(payload, key)) {
      if (rule.required) found.push(command + ": missing field " + quote(key));
      continue;
    }
    const value = payload[key];
    if (!fits(value, rule.type)) {
      found.push(command + ": field " + quote(key) + " has the wrong type (" +
        jsonType(value) + ", not " + rule.type + ")");
      continue;
    }
    found.push(...range(command, key, value, rule));
  }
  return found;
}

module.exports = { problems, jsonType };
