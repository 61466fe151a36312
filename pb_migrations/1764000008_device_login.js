/// <reference path="../pb_data/types.d.ts" />
// Device codes unique per tenant, not across all tenants (issue 14): two customers can each
// have `web-01`, since a device's subjects live inside its tenant's own NATS account.
//
// PocketBase needs a single-column unique identity for an auth collection, so a device now
// logs in as `login` = `<tenant slug>/<code>`. pb_hooks/devices.pb.js keeps `login` in step
// with the tenant and code on every write (nobody sets it by hand). A tenant's slug cannot
// change while it has devices: their logins hold it.
//
// Devices that exist here were made while codes were unique across tenants, and their
// agents log in by the bare code (SPEC §7's `--code` only): they get `bare_code_login`,
// which lets exactly them go on doing so. A device made later never has it (a login never
// picks a tenant by trying the secret), and it is lost when the device's code or tenant
// changes. At most one device per code has it, since the old codes were unique.
//
// `down` brings back the global code index, and says so when two tenants share a code.

const LOGIN_HELP = "Made by Cairn from the tenant's slug and the code: the device logs in " +
  "with it (cairn-agent enroll --tenant <slug> --code <code>).";
const OLD_CODE_INDEX = "CREATE UNIQUE INDEX `idx_cairn_devices_code` ON `devices` (`code`)";
const NEW_INDEXES = [
  "CREATE UNIQUE INDEX `idx_cairn_devices_tenant_code` ON `devices` (`tenant`, `code`)",
  "CREATE UNIQUE INDEX `idx_cairn_devices_login` ON `devices` (`login`)",
  // a bare-code login (and the bridge's lookups) find rows by code alone
  "CREATE INDEX `idx_cairn_devices_code_any` ON `devices` (`code`)",
];
const BARE_HELP = "Set by Cairn for devices made before codes were per tenant: such a " +
  "device may still log in by its bare code. Lost when the code or tenant changes.";
const CODE_HELP = "3 to 64 lower-case letters, digits and '-' (^[a-z0-9-]{3,64}$), unique " +
  "in the tenant; the agent's name on NATS (agents.<code>.>).";

migrate((app) => {
  let devices = app.findCollectionByNameOrId("devices");
  devices.fields.add(new TextField({
    name: "login", max: 255, presentable: true, help: LOGIN_HELP,
  }));
  devices.fields.add(new BoolField({ name: "bare_code_login", help: BARE_HELP }));
  devices.fields.getByName("code").presentable = false;
  devices.fields.getByName("code").help = CODE_HELP;
  app.save(devices);

  app.db().newQuery(
    "UPDATE devices SET login = COALESCE((SELECT slug FROM tenants " +
    "WHERE tenants.id = devices.tenant), '') || '/' || code, bare_code_login = (code IN " +
    "(SELECT code FROM devices GROUP BY code HAVING COUNT(*) = 1))").execute();

  devices = app.findCollectionByNameOrId("devices");
  devices.indexes = devices.indexes.filter((i) => i !== OLD_CODE_INDEX).concat(NEW_INDEXES);
  devices.passwordAuth.identityFields = ["login"];
  app.save(devices);
}, (app) => {
  const shared = arrayOf(new DynamicModel({ code: "" }));
  app.db().newQuery("SELECT code FROM devices GROUP BY code HAVING COUNT(*) > 1 LIMIT 5")
    .all(shared);
  if (shared.length) {
    throw new Error("device codes are shared by tenants (" +
      shared.map((r) => r.code).join(", ") + "): rename them before going back to one " +
      "code index for all tenants");
  }
  const devices = app.findCollectionByNameOrId("devices");
  devices.passwordAuth.identityFields = ["code"];
  devices.indexes = devices.indexes.filter((i) => !NEW_INDEXES.includes(i))
    .concat([OLD_CODE_INDEX]);
  devices.fields.getByName("code").presentable = true;
  devices.fields.removeByName("login");
  devices.fields.removeByName("bare_code_login");
  app.save(devices);
});
