/// <reference path="../pb_data/types.d.ts" />
// Cairn data model (SPEC §4), with the API rules of SPEC §10.
//
// Conventions:
// - Every collection has a FIXED id, because relation fields reference collections by id.
// - Every rule starts with `@request.auth.collectionName = "users"` (or "devices"): a device
//   token passes `@request.auth.id != ""`, and an empty relation equals an anonymous caller's
//   empty id. `null` = superusers only.
// - Membership checks use the back-relation `tenant.memberships_via_tenant`. PocketBase joins
//   one path once, so every condition on `…memberships_via_tenant.*` in a rule applies to the
//   SAME membership row (user AND role of one row). tests/test_api_rules.py proves it with the
//   cross-tenant attack (a viewer of A who owns X must not act as owner of A).
// - Every field a caller must not set is guarded with `@request.body.<field>:isset = false`
//   (unguarded fields stay writable); every guard is exercised by a test.
// - PocketBase has no column defaults: an empty devices.role means "agent", an empty
//   devices.status means "pending", an empty commands.status means "queued", an empty
//   rules.status means "not validated yet". Readers (bridge, router) apply these meanings.

const ID = {
  tenants: "cairn_tenants00",
  memberships: "cairn_members00",
  nats_accounts: "cairn_natsacc00",
  nats_roles: "cairn_natsrol00",
  devices: "cairn_devices00",
  nats_users: "cairn_natsusr00",
  commands: "cairn_commands0",
  rules: "cairn_rules0000",
  audit_log: "cairn_auditlog0",
};

// Dependency order: a collection only references collections before it. Deleted in reverse.
const ORDER = [
  "tenants", "memberships", "nats_accounts", "nats_roles", "devices",
  "nats_users", "commands", "rules", "audit_log",
];

const USERS = '@request.auth.collectionName = "users"';
const DEVICES = '@request.auth.collectionName = "devices"';
const MANAGER = ["owner", "admin"];
const WRITER = ["owner", "admin", "operator"];

// `p` is the path to the tenant record: "" on tenants itself, "tenant." on tenant-owned rows,
// "device.tenant." on commands.
function member(p) {
  return `${p}memberships_via_tenant.user ?= @request.auth.id`;
}
function hasRole(p, roles) {
  const alts = roles.map((r) => `${p}memberships_via_tenant.role ?= "${r}"`).join(" || ");
  return `${member(p)} && (${alts})`;
}
function guard(fields) {
  return fields.map((f) => `@request.body.${f}:isset = false`).join(" && ");
}
function all(...parts) {
  return parts.filter((x) => x).join(" && ");
}

function autodates() {
  return [
    { name: "created", type: "autodate", onCreate: true, onUpdate: false },
    { name: "updated", type: "autodate", onCreate: true, onUpdate: true },
  ];
}
function text(name, opts) {
  return Object.assign({ name: name, type: "text" }, opts || {});
}
function json(name, opts) {
  return Object.assign({ name: name, type: "json" }, opts || {});
}
function tenantRel(opts) {
  return Object.assign(
    { name: "tenant", type: "relation", collectionId: ID.tenants, maxSelect: 1,
      required: true, cascadeDelete: true },
    opts || {},
  );
}

const SLUG = "^[a-z0-9-]+$";
const BIG_TEXT = 1000000; // account/user JWTs grow with revocations and permissions

function definitions() {
  const tenantMember = all(USERS, member("tenant."));
  const tenantManager = all(USERS, hasRole("tenant.", MANAGER));
  const tenantWriter = all(USERS, hasRole("tenant.", WRITER));
  const isOwner = hasRole("tenant.", ["owner"]);

  return {
    tenants: {
      id: ID.tenants,
      name: "tenants",
      type: "base",
      // Rules are set after `memberships` exists (the back-relation must resolve at save).
      listRule: null, viewRule: null, createRule: null, updateRule: null, deleteRule: null,
      fields: [
        text("name", { required: true, max: 200 }),
        text("slug", { required: true, pattern: SLUG, max: 63 }),
        { name: "active", type: "bool" },
        json("limits", { maxSize: 65536 }),
        text("nats_account_public_key", { max: 256 }),
        text("error"),
        ...autodates(),
      ],
      indexes: ["CREATE UNIQUE INDEX `idx_cairn_tenants_slug` ON `tenants` (`slug`)"],
    },

    memberships: {
      id: ID.memberships,
      name: "memberships",
      type: "base",
      listRule: tenantMember,
      viewRule: tenantMember,
      // Only an owner may grant the "owner" role, change an owner's membership or delete it;
      // admins manage the rest. All role conditions use the same join row (see the header);
      // proven by test_only_owner_grants_owner / test_owner_membership_changes. Nothing stops
      // an owner from removing the last owner of a tenant (a superuser can repair that).
      createRule: all(
        tenantManager,
        `(@request.body.role != "owner" || (${isOwner}))`,
      ),
      updateRule: all(
        tenantManager,
        guard(["user", "tenant"]),
        `((role != "owner" && @request.body.role != "owner") || (${isOwner}))`,
      ),
      deleteRule: all(tenantManager, `(role != "owner" || (${isOwner}))`),
      fields: [
        { name: "user", type: "relation", collectionId: "_pb_users_auth_", maxSelect: 1,
          required: true, cascadeDelete: true },
        tenantRel(),
        { name: "role", type: "select", maxSelect: 1, required: true,
          values: ["owner", "admin", "operator", "viewer"] },
        ...autodates(),
      ],
      indexes: [
        "CREATE UNIQUE INDEX `idx_cairn_memberships_user_tenant` ON `memberships` (`user`, `tenant`)",
        "CREATE INDEX `idx_cairn_memberships_tenant` ON `memberships` (`tenant`)",
      ],
    },

    nats_accounts: {
      id: ID.nats_accounts,
      name: "nats_accounts",
      type: "base",
      listRule: null, viewRule: null, createRule: null, updateRule: null, deleteRule: null,
      fields: [
        tenantRel(),
        text("public_key", { max: 256 }),
        text("signing_public_key", { max: 256 }),
        text("seed", { hidden: true, max: 256 }),
        text("signing_seed", { hidden: true, max: 256 }),
        text("jwt", { max: BIG_TEXT }),
        json("revocations", { maxSize: 5000000 }),
        ...autodates(),
      ],
      indexes: ["CREATE UNIQUE INDEX `idx_cairn_nats_accounts_tenant` ON `nats_accounts` (`tenant`)"],
    },

    nats_roles: {
      id: ID.nats_roles,
      name: "nats_roles",
      type: "base",
      listRule: all(USERS, `(tenant = "" || ${member("tenant.")})`),
      viewRule: all(USERS, `(tenant = "" || ${member("tenant.")})`),
      // Global roles (tenant = "") are for superusers only.
      createRule: all(USERS, 'tenant != ""', hasRole("tenant.", MANAGER)),
      updateRule: all(USERS, 'tenant != ""', hasRole("tenant.", MANAGER), guard(["tenant"])),
      deleteRule: all(USERS, 'tenant != ""', hasRole("tenant.", MANAGER)),
      fields: [
        text("name", { required: true, pattern: SLUG, max: 63 }),
        // Optional: empty = global role. Tenant roles go away with their tenant.
        tenantRel({ required: false }),
        json("publish_allow"),
        json("publish_deny"),
        json("subscribe_allow"),
        json("subscribe_deny"),
        { name: "allow_responses", type: "bool" },
        text("error"),
        ...autodates(),
      ],
      indexes: ["CREATE UNIQUE INDEX `idx_cairn_nats_roles_name_tenant` ON `nats_roles` (`name`, `tenant`)"],
    },

    devices: {
      id: ID.devices,
      name: "devices",
      type: "auth",
      listRule: `(${all(USERS, member("tenant."))}) || ` +
        `(${DEVICES} && id = @request.auth.id && @request.auth.status != "disabled")`,
      viewRule: `(${all(USERS, member("tenant."))}) || ` +
        `(${DEVICES} && id = @request.auth.id && @request.auth.status != "disabled")`,
      createRule: all(
        tenantWriter,
        '(@request.body.status:isset = false || @request.body.status = "" || ' +
          '@request.body.status = "pending" || @request.body.status = "disabled")',
        guard(["nats_public_key", "nats_jwt", "nats_jwt_expires", "last_seen", "online",
          "error", "hostname", "os", "agent_version",
          // SPEC §10: guard the auth system fields too (a device has no email).
          "email", "emailVisibility", "verified"]),
      ),
      // Users (writers) may change name, status, role, config. The device itself may change
      // only nats_public_key, hostname, os, agent_version.
      updateRule: `(${all(tenantWriter, guard(["code", "tenant", "nats_public_key",
        "nats_jwt", "nats_jwt_expires", "last_seen", "online", "error", "hostname", "os",
        "agent_version", "email", "emailVisibility", "verified", "password"]))}) || ` +
        `(${all(DEVICES, "id = @request.auth.id", '@request.auth.status != "disabled"',
          guard(["code", "tenant", "name", "role", "status", "nats_jwt", "nats_jwt_expires",
            "last_seen", "online", "config", "error", "email", "emailVisibility", "verified",
            "password", "passwordConfirm", "oldPassword"]))})`,
      deleteRule: tenantWriter,
      manageRule: null,
      // Tokens already issued stay valid: the device rules above check @request.auth.status too.
      authRule: 'status != "disabled"',
      passwordAuth: { enabled: true, identityFields: ["code"] },
      authAlert: { enabled: false },
      fields: [
        // A device has no email; the system field cannot be removed, only made optional.
        { name: "email", type: "email", system: true, required: false },
        text("code", { required: true, pattern: "^[a-z0-9-]{3,64}$", min: 3, max: 64 }),
        tenantRel(),
        text("name", { max: 200 }),
        // Empty means "agent" (PocketBase has no defaults).
        text("role", { max: 63 }),
        // Empty is treated as "pending" by the bridge.
        { name: "status", type: "select", maxSelect: 1, values: ["pending", "active", "disabled"] },
        text("nats_public_key", { max: 256 }),
        text("nats_jwt", { max: BIG_TEXT }),
        { name: "nats_jwt_expires", type: "date" },
        text("hostname", { max: 256 }),
        text("os", { max: 256 }),
        text("agent_version", { max: 256 }),
        { name: "last_seen", type: "date" },
        { name: "online", type: "bool" },
        json("config", { maxSize: 65536 }),
        text("error"),
        ...autodates(),
      ],
      indexes: [
        "CREATE UNIQUE INDEX `idx_cairn_devices_code` ON `devices` (`code`)",
        "CREATE INDEX `idx_cairn_devices_tenant` ON `devices` (`tenant`)",
      ],
    },

    nats_users: {
      id: ID.nats_users,
      name: "nats_users",
      type: "base",
      listRule: tenantManager,
      viewRule: tenantManager,
      // seed/creds are hidden: PocketBase already drops hidden fields from non-superuser
      // bodies before the rules run, so their guards are belt and braces.
      createRule: all(tenantManager, guard(["public_key", "jwt", "seed", "creds", "error"])),
      updateRule: all(tenantManager,
        guard(["tenant", "public_key", "jwt", "seed", "creds", "error"])),
      deleteRule: tenantManager,
      fields: [
        tenantRel(),
        text("name", { required: true, pattern: SLUG, max: 63 }),
        text("role", { required: true, max: 63 }),
        text("public_key", { max: 256 }),
        text("jwt", { max: BIG_TEXT }),
        text("seed", { hidden: true, max: 256 }),
        text("creds", { hidden: true, max: BIG_TEXT }),
        { name: "active", type: "bool" },
        text("error"),
        ...autodates(),
      ],
      indexes: ["CREATE UNIQUE INDEX `idx_cairn_nats_users_tenant_name` ON `nats_users` (`tenant`, `name`)"],
    },

    commands: {
      id: ID.commands,
      name: "commands",
      type: "base",
      listRule: all(USERS, member("device.tenant.")),
      viewRule: all(USERS, member("device.tenant.")),
      createRule: all(
        USERS,
        "device.tenant = tenant",
        hasRole("device.tenant.", WRITER),
        "@request.body.requested_by = @request.auth.id",
        '(@request.body.status:isset = false || @request.body.status = "queued")',
        guard(["response", "completed_at", "sent_at", "error", "duration_ms"]),
      ),
      updateRule: null, // the bridge (superuser) only
      deleteRule: null,
      fields: [
        tenantRel(),
        { name: "device", type: "relation", collectionId: ID.devices, maxSelect: 1,
          required: true, cascadeDelete: true },
        { name: "command", type: "select", maxSelect: 1, required: true,
          values: ["ping", "health", "exec", "service", "logs", "inventory", "rotate_creds"] },
        json("payload", { maxSize: 1048576 }),
        // Empty means "queued".
        { name: "status", type: "select", maxSelect: 1,
          values: ["queued", "sent", "succeeded", "failed", "expired"] },
        json("response", { maxSize: 2097152 }),
        text("error"),
        text("requested_by", { max: 64 }),
        { name: "expires_at", type: "date" },
        { name: "sent_at", type: "date" },
        { name: "completed_at", type: "date" },
        { name: "duration_ms", type: "number", onlyInt: true },
        ...autodates(),
      ],
      indexes: [
        "CREATE INDEX `idx_cairn_commands_device` ON `commands` (`device`)",
        "CREATE INDEX `idx_cairn_commands_status` ON `commands` (`status`)",
      ],
    },

    rules: {
      id: ID.rules,
      name: "rules",
      type: "base",
      listRule: tenantMember,
      viewRule: tenantMember,
      createRule: all(tenantWriter, guard(["status", "error"])),
      updateRule: all(tenantWriter, guard(["tenant", "status", "error"])),
      deleteRule: tenantWriter,
      fields: [
        tenantRel(),
        text("name", { required: true, max: 200 }),
        { name: "enabled", type: "bool" },
        text("yaml", { max: 262144 }),
        // Written by the router only; empty = not validated yet.
        { name: "status", type: "select", maxSelect: 1, values: ["valid", "invalid", "error"] },
        text("error"),
        ...autodates(),
      ],
      indexes: ["CREATE UNIQUE INDEX `idx_cairn_rules_tenant_name` ON `rules` (`tenant`, `name`)"],
    },

    audit_log: {
      id: ID.audit_log,
      name: "audit_log",
      type: "base",
      listRule: tenantMember,
      viewRule: tenantMember,
      createRule: null,
      updateRule: null,
      deleteRule: null,
      fields: [
        // Not required, no cascade: audit rows survive the deletion of their tenant.
        tenantRel({ required: false, cascadeDelete: false }),
        text("actor", { max: 256 }),
        text("action", { required: true, max: 256 }),
        text("target", { max: 1024 }),
        json("details"),
        ...autodates(),
      ],
      indexes: ["CREATE INDEX `idx_cairn_audit_log_tenant` ON `audit_log` (`tenant`)"],
    },
  };
}

// The default rules of the stock `users` collection (restored by the down migration).
const USERS_DEFAULT = {
  listRule: "id = @request.auth.id",
  viewRule: "id = @request.auth.id",
  createRule: "",
  updateRule: "id = @request.auth.id",
  deleteRule: "id = @request.auth.id",
};

migrate((app) => {
  // users: no public sign-up; self only; no self-change of email/verified.
  const users = app.findCollectionByNameOrId("_pb_users_auth_");
  const self = `${USERS} && id = @request.auth.id`;
  users.listRule = self;
  users.viewRule = self;
  users.createRule = null;
  // Own password changes stay possible (PocketBase requires oldPassword for them).
  users.updateRule = all(self, guard(["email", "verified", "emailVisibility"]));
  users.deleteRule = self;
  app.save(users);

  const defs = definitions();
  for (const name of ORDER) {
    app.save(new Collection(defs[name]));
  }

  // tenants' rules need memberships (back-relation) to exist.
  const tenants = app.findCollectionByNameOrId(ID.tenants);
  const tenantsMember = all(USERS, member(""));
  tenants.listRule = tenantsMember;
  tenants.viewRule = tenantsMember;
  tenants.createRule = null;
  tenants.updateRule = all(
    USERS,
    hasRole("", MANAGER),
    guard(["slug", "active", "nats_account_public_key", "error"]),
  );
  tenants.deleteRule = null;
  app.save(tenants);
}, (app) => {
  // Drop the rules that reference memberships first, then the collections in reverse order.
  const tenants = app.findCollectionByNameOrId(ID.tenants);
  tenants.listRule = null;
  tenants.viewRule = null;
  tenants.updateRule = null;
  app.save(tenants);

  for (const name of ORDER.slice().reverse()) {
    app.delete(app.findCollectionByNameOrId(ID[name]));
  }

  const users = app.findCollectionByNameOrId("_pb_users_auth_");
  for (const key of Object.keys(USERS_DEFAULT)) {
    users[key] = USERS_DEFAULT[key];
  }
  app.save(users);
});
