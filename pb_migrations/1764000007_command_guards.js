/// <reference path="../pb_data/types.d.ts" />
// Commands refused with their reason in the form (issue 14). PocketBase checks a create
// rule before any hook, and a rule refusal says only "Failed to create record.". So the
// create rule now asks for a writer of the row's own tenant, and pb_hooks/commands.pb.js
// refuses a device of another tenant (or a disabled one) with words under the device
// field, for superusers too. The bridge still refuses such a row if one ever exists
// (dispatch.py: "the device belongs to another tenant").
//
// A tenant's name becomes presentable (the pickers showed ids).
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

migrate((app) => {
  const commands = app.findCollectionByNameOrId("commands");
  commands.createRule = rule("tenant.", false);
  app.save(commands);
  tenantNamePresentable(app, true);
}, (app) => {
  const commands = app.findCollectionByNameOrId("commands");
  commands.createRule = rule("device.tenant.", true);
  app.save(commands);
  tenantNamePresentable(app, false);
});
