/// <reference path="../pb_data/types.d.ts" />
// Commands refused with their reason in the form (issue 14). PocketBase checks a create
// rule before any hook, and a rule refusal says only "Failed to create record.". So the
// create rule now asks for a writer of the row's own tenant, and pb_hooks/commands.pb.js
// refuses a device of another tenant (or a disabled one) with words under the device
// field, for superusers too. The bridge still refuses such a row if one ever exists
// (dispatch.py: "the device belongs to another tenant").
//
// A tenant's name becomes presentable (the pickers showed ids); the fields an admin fills
// in get help texts.
//
// `down` restores the rule that tied the device's tenant to the row's.

const WRITER = ["owner", "admin", "operator"];

function rule(p, tieDevice) {
  const member = `${p}memberships_via_tenant.user ?= @request.auth.id`;
  const roles = WRITER.map((r) => `${p}memberships_via_tenant.role ?= "${r}"`).join(" || ");
  return [
    '@request.auth.collectionName = "users"',
    tieDevice ? "device.tenant = tenant" : "",
    `${member} && (${roles})`,
    "@request.body.requested_by = @request.auth.id",
    '(@request.body.status:isset = false || @request.body.status = "queued")',
    ["response", "completed_at", "sent_at", "error", "duration_ms"]
      .map((f) => `@request.body.${f}:isset = false`).join(" && "),
  ].filter((x) => x).join(" && ");
}

// Pickers and toasts show a tenant's name, not its id.
function tenantNamePresentable(app, value) {
  const tenants = app.findCollectionByNameOrId("tenants");
  tenants.fields.getByName("name").presentable = value;
  app.save(tenants);
}

// Help under the fields an admin fills in the Admin UI.
const HELP = {
  tenants: {
    slug: "Lower-case letters, digits and '-' (^[a-z0-9-]+$); names the tenant's NATS account.",
    active: "Off: the tenant's NATS account is disabled and its devices cannot enroll.",
    limits: "JSON quotas, all optional: max_connections, max_subscriptions, max_payload, " +
      "max_data, jetstream_memory, jetstream_storage, max_streams, max_consumers, " +
      "max_leafnodes, telemetry_max_bytes (integers; -1 = unlimited where allowed).",
  },
  devices: {
    code: "3 to 64 lower-case letters, digits and '-' (^[a-z0-9-]{3,64}$); the agent's name " +
      "on NATS (agents.<code>.>).",
    role: "Empty means agent. Otherwise a role of this tenant (nats_roles) made for devices.",
    password: "The enrollment secret: give it to `cairn-agent enroll` on the machine.",
  },
  commands: {
    payload: 'A JSON object. ping, health, inventory, rotate_creds: {}. exec: {"command", ' +
      '"args"?, "timeout"?}. service: {"action": start|stop|restart|status, ' +
      '"service_name"}. logs: {"log_path", "lines"?}.',
    expires_at: "Empty: one hour after creation. A command not sent by then expires.",
    requested_by: "Your own user id when you create it through the API (superusers: any).",
  },
};

function setHelp(app, on) {
  for (const [name, fields] of Object.entries(HELP)) {
    const collection = app.findCollectionByNameOrId(name);
    for (const [field, text] of Object.entries(fields)) {
      const f = collection.fields.getByName(field);
      if (f) f.help = on ? text : "";
    }
    app.save(collection);
  }
}

migrate((app) => {
  const commands = app.findCollectionByNameOrId("commands");
  commands.createRule = rule("tenant.", false);
  app.save(commands);
  tenantNamePresentable(app, true);
  setHelp(app, true);
}, (app) => {
  const commands = app.findCollectionByNameOrId("commands");
  commands.createRule = rule("device.tenant.", true);
  app.save(commands);
  tenantNamePresentable(app, false);
  setHelp(app, false);
});
