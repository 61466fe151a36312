/// <reference path="../pb_data/types.d.ts" />
// People on the bus (SPEC §13): a person's own NATS identity, one per tenant membership.
//
// - `person_keys`: a person registers the public key of an nkey they made themselves
//   (`cairn login`, or the dashboard in the browser); the seed never leaves their machine.
//   The bridge signs a user JWT for it in the tenant's account, with the permissions of the
//   membership's role, and writes `jwt`, `jwt_expires` and `role` back. One row per login:
//   deleting the row (logging out) revokes the key; so do removing the membership and
//   disabling the user.
//   A person may create a row only for their own membership, only naming that membership's
//   tenant, and may set neither the JWT, its expiry, its role nor an error. Rows are never
//   updated by people (a new login is a new row): only the bridge writes them after create.
// - `users.disabled`: set by superusers. A disabled person cannot log in to PocketBase
//   (pb_hooks/people.pb.js), registers no key, and every JWT they hold is revoked.
//
// `down` removes both again and restores the users update rule.

const ID = {
  tenants: "cairn_tenants00",
  memberships: "cairn_members00",
  person_keys: "cairn_personkey",
};

const USERS = '@request.auth.collectionName = "users"';
const SET_BY_BRIDGE = ["jwt", "jwt_expires", "role", "error"];
const USERS_OWN_GUARDS = ["email", "verified", "emailVisibility"];

function guard(fields) {
  return fields.map((f) => `@request.body.${f}:isset = false`).join(" && ");
}

function usersUpdateRule(guards) {
  return `${USERS} && id = @request.auth.id && ${guard(guards)}`;
}

function personKeys() {
  const own = `${USERS} && user = @request.auth.id`;
  return new Collection({
    id: ID.person_keys,
    name: "person_keys",
    type: "base",
    listRule: own,
    viewRule: own,
    createRule: `${own} && @request.auth.disabled != true && ` +
      `membership.user = @request.auth.id && tenant = membership.tenant && ` +
      guard(SET_BY_BRIDGE),
    updateRule: null,
    deleteRule: own,
    fields: [
      { name: "user", type: "relation", collectionId: "_pb_users_auth_", maxSelect: 1,
        required: true, cascadeDelete: true },
      { name: "membership", type: "relation", collectionId: ID.memberships, maxSelect: 1,
        required: true, cascadeDelete: true },
      { name: "tenant", type: "relation", collectionId: ID.tenants, maxSelect: 1,
        required: true, cascadeDelete: true },
      { name: "public_key", type: "text", required: true, pattern: "^U[A-Z2-7]{55}$",
        min: 56, max: 56 },
      { name: "label", type: "text", max: 100, presentable: true },
      { name: "jwt", type: "text", max: 8192 },
      { name: "jwt_expires", type: "date" },
      { name: "role", type: "text", max: 32 },
      { name: "error", type: "text", max: 1000 },
      { name: "created", type: "autodate", onCreate: true, onUpdate: false },
      { name: "updated", type: "autodate", onCreate: true, onUpdate: true },
    ],
    indexes: [
      // one row per key in a tenant: nobody registers a colleague's key (seen in audit_log)
      // under their own membership to revoke it by deleting the row
      "CREATE UNIQUE INDEX `idx_cairn_person_keys_key` ON `person_keys` (`tenant`, `public_key`)",
      "CREATE INDEX `idx_cairn_person_keys_user` ON `person_keys` (`user`)",
      "CREATE INDEX `idx_cairn_person_keys_tenant` ON `person_keys` (`tenant`)",
    ],
  });
}

// A login is one row per tenant; a loop making and deleting rows would only grow the
// account's revocation list.
const CREATE_LIMIT = { label: "person_keys:create", maxRequests: 20, duration: 60 };

function setCreateLimit(app, on) {
  const settings = app.settings();
  const rules = (settings.rateLimits.rules || []).filter((r) => r.label !== CREATE_LIMIT.label);
  if (on) {
    rules.push(CREATE_LIMIT);
  }
  settings.rateLimits.rules = rules;
  app.save(settings);
}

migrate((app) => {
  const users = app.findCollectionByNameOrId("_pb_users_auth_");
  if (!users.fields.getByName("disabled")) {
    users.fields.add(new BoolField({ name: "disabled" }));
  }
  users.updateRule = usersUpdateRule([...USERS_OWN_GUARDS, "disabled"]);
  app.save(users);
  app.save(personKeys());
  setCreateLimit(app, true);
}, (app) => {
  setCreateLimit(app, false);
  app.delete(app.findCollectionByNameOrId(ID.person_keys));
  const users = app.findCollectionByNameOrId("_pb_users_auth_");
  users.fields.removeByName("disabled");
  users.updateRule = usersUpdateRule(USERS_OWN_GUARDS);
  app.save(users);
});
