/// <reference path="../pb_data/types.d.ts" />
// Security contract (SPEC §11): what a hostile tenant member or device must never do.
//
// - `tenants.limits` belongs to the MSP: only superusers change it.
// - Only owners/admins set `devices.role` (operators create and disable devices, but cannot
//   pick the NATS permissions a device gets). The bridge also refuses to sign a device JWT
//   whose role reaches beyond `agents.<code>.>` and the device's inbox.
// - Tenant roles may not take the name of a global role (they would shadow it).
// - Global roles: every identity subscribes only to its own inbox prefix
//   (`{inbox}` = `_INBOX_<code>` for devices, `_INBOX_svc_<name>` for service users); the
//   viewer reads telemetry and alerts, never commands; a new `router` role for the rule
//   router publishes alerts only and uses only its own durable consumer.
// - `sidecars`: an auth collection for Cairn's own least-privilege components (today the
//   rule router), so that no sidecar but the bridge holds the superuser login. A router
//   reads rules and tenants, writes only rules.status/error, reads the JWTs the bridge
//   issued for its own key (`nats_users` rows named like it), and sets its own public key.
// - PocketBase's rate limiter guards the auth endpoints.

const ID = {
  tenants: "cairn_tenants00",
  devices: "cairn_devices00",
  nats_roles: "cairn_natsrol00",
  nats_users: "cairn_natsusr00",
  rules: "cairn_rules0000",
  sidecars: "cairn_sidecars0",
};

const USERS = '@request.auth.collectionName = "users"';
const ROUTER = '@request.auth.collectionName = "sidecars" && @request.auth.kind = "router"';
const GLOBAL_ROLE_NAMES = ["agent", "service", "viewer", "router"];
const OWN_PREFIX = "cairn-"; // nats_users and sidecars of Cairn's own components
const NATS_USER_SET_BY_BRIDGE = ["public_key", "jwt", "seed", "creds", "error"];

function guard(fields) {
  return fields.map((f) => `@request.body.${f}:isset = false`).join(" && ");
}
function manager(p) {
  return `${p}memberships_via_tenant.user ?= @request.auth.id && ` +
    `(${p}memberships_via_tenant.role ?= "owner" || ${p}memberships_via_tenant.role ?= "admin")`;
}
function writer(p) {
  return `${p}memberships_via_tenant.user ?= @request.auth.id && ` +
    `(${p}memberships_via_tenant.role ?= "owner" || ${p}memberships_via_tenant.role ?= "admin"` +
    ` || ${p}memberships_via_tenant.role ?= "operator")`;
}
function member(p) {
  return `${p}memberships_via_tenant.user ?= @request.auth.id`;
}

// ---------------------------------------------------------------------------- roles

const JS_READ = ["$JS.API.INFO", "$JS.API.STREAM.INFO.TELEMETRY"];

// Subjects of one consumer named `{code}` on TELEMETRY: create (with or without a filter
// subject), info, delete, pull and ack. Nothing else: another identity's durable consumer
// can be neither pulled, acked, changed nor deleted. Only for Cairn's own router.
function ownConsumer() {
  return [
    "$JS.API.CONSUMER.CREATE.TELEMETRY.{code}",
    "$JS.API.CONSUMER.CREATE.TELEMETRY.{code}.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.TELEMETRY.{code}",
    "$JS.API.CONSUMER.INFO.TELEMETRY.{code}",
    "$JS.API.CONSUMER.DELETE.TELEMETRY.{code}",
    "$JS.API.CONSUMER.MSG.NEXT.TELEMETRY.{code}",
    "$JS.ACK.TELEMETRY.{code}.>",
  ];
}

const ROLES = {
  // The bridge also denies a device publishing on any subject it subscribes to (a device
  // that could send itself a request could "answer" it anywhere through allow_responses).
  agent: {
    publish_allow: ["agents.{code}.>"],
    publish_deny: ["agents.{code}.cmd.>", "{inbox}.>"],
    subscribe_allow: ["agents.{code}.cmd.>", "{inbox}.>"],
    subscribe_deny: [],
    allow_responses: true,
  },
  // Viewers publish nothing at all: not even JetStream API requests. NATS does not check a
  // publisher's reply subject, and the JetStream server publishes its answer (a message
  // read from the stream, a 404 status, a PubAck) into that subject itself, so any
  // `$JS.API` right lets its holder inject messages into every subject of the tenant (a
  // reviewer had an agent rotate its key that way). Consumers are out for the same kind of
  // reason: their creator picks the deliver subject. Viewers follow live telemetry,
  // heartbeats and alerts with plain subscriptions.
  viewer: {
    publish_allow: [],
    publish_deny: [">"],
    subscribe_allow: ["agents.*.telemetry.>", "agents.*.heartbeat", "alerts.>", "{inbox}.>"],
    subscribe_deny: [],
    allow_responses: false,
  },
  router: {
    publish_allow: ["alerts.>", ...JS_READ, ...ownConsumer()],
    publish_deny: [],
    subscribe_allow: ["agents.>", "alerts.>", "{inbox}.>"],
    subscribe_deny: [],
    allow_responses: false,
  },
};

// The roles as the earlier migration seeded them (restored by the down migration).
const OLD_ROLES = {
  agent: {
    publish_allow: ["agents.{code}.>"], publish_deny: [],
    subscribe_allow: ["agents.{code}.cmd.>", "_INBOX.>"], subscribe_deny: [],
    allow_responses: true,
  },
  viewer: {
    publish_allow: ["_INBOX.>", "$JS.API.INFO", "$JS.API.STREAM.INFO.>", "$JS.API.STREAM.NAMES",
      "$JS.API.STREAM.LIST", "$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.INFO.>",
      "$JS.API.CONSUMER.MSG.NEXT.>", "$JS.ACK.>"],
    publish_deny: ["agents.*.cmd.>"],
    subscribe_allow: ["agents.>", "alerts.>", "_INBOX.>"], subscribe_deny: [],
    allow_responses: false,
  },
};

function findGlobal(app, name) {
  try {
    return app.findFirstRecordByFilter(ID.nats_roles, "name = {:name} && tenant = ''",
      { name: name });
  } catch (_) {
    return null; // not found
  }
}

function putRoles(app, roles, removeMissing) {
  const collection = app.findCollectionByNameOrId(ID.nats_roles);
  for (const name of Object.keys(roles)) {
    const record = findGlobal(app, name) || new Record(collection);
    record.set("name", name);
    for (const key of Object.keys(roles[name])) {
      record.set(key, roles[name][key]);
    }
    app.save(record);
  }
  for (const name of removeMissing) {
    const record = findGlobal(app, name);
    if (record) {
      app.delete(record);
    }
  }
}

// ---------------------------------------------------------------------------- sidecars

function sidecarsCollection() {
  const self = '@request.auth.collectionName = "sidecars" && id = @request.auth.id';
  return new Collection({
    id: ID.sidecars,
    name: "sidecars",
    type: "auth",
    listRule: self,
    viewRule: self,
    createRule: null,
    // A sidecar may set only its own NATS public key (it generates the key itself).
    updateRule: `${self} && ${guard(["name", "kind", "error", "email", "emailVisibility",
      "verified", "password", "passwordConfirm", "oldPassword"])}`,
    deleteRule: null,
    manageRule: null,
    passwordAuth: { enabled: true, identityFields: ["name"] },
    authAlert: { enabled: false },
    fields: [
      { name: "email", type: "email", system: true, required: false },
      { name: "name", type: "text", required: true, pattern: "^cairn-[a-z0-9-]{1,57}$",
        min: 7, max: 63, presentable: true },
      { name: "kind", type: "select", maxSelect: 1, required: true, values: ["router"] },
      { name: "nats_public_key", type: "text", max: 256 },
      { name: "error", type: "text" },
      { name: "created", type: "autodate", onCreate: true, onUpdate: false },
      { name: "updated", type: "autodate", onCreate: true, onUpdate: true },
    ],
    indexes: ["CREATE UNIQUE INDEX `idx_cairn_sidecars_name` ON `sidecars` (`name`)"],
  });
}

// ---------------------------------------------------------------------------- rules

function securityRules() {
  const tenantWriter = `${USERS} && ${writer("tenant.")}`;
  const roleByManager = `(@request.body.role:isset = false || (${manager("tenant.")}))`;
  const notGlobalName = GLOBAL_ROLE_NAMES.map((n) => `@request.body.name != "${n}"`)
    .join(" && ");
  return {
    tenants: {
      listRule: `(${USERS} && ${member("")}) || (${ROUTER})`,
      viewRule: `(${USERS} && ${member("")}) || (${ROUTER})`,
      updateRule: `${USERS} && ${manager("")} && ` +
        guard(["slug", "active", "limits", "nats_account_public_key", "error"]),
    },
    devices: {
      createRule: null, // set below from the current rule (keeps its guards)
      updateRule: null,
      extra: roleByManager,
    },
    nats_roles: {
      createRule: `${USERS} && tenant != "" && ${manager("tenant.")} && ${notGlobalName}`,
      updateRule: `${USERS} && tenant != "" && ${manager("tenant.")} && ` +
        `${guard(["tenant"])} && (@request.body.name:isset = false || (${notGlobalName}))`,
    },
    // Rows named `cairn-*` are Cairn's own identities (the bridge's, the sidecars'): a
    // tenant admin neither makes, changes nor deletes them.
    nats_users: {
      listRule: `(${USERS} && ${manager("tenant.")}) || (${ROUTER} && name = @request.auth.name)`,
      viewRule: `(${USERS} && ${manager("tenant.")}) || (${ROUTER} && name = @request.auth.name)`,
      createRule: `${USERS} && ${manager("tenant.")} && ${guard(NATS_USER_SET_BY_BRIDGE)} && ` +
        `@request.body.name !~ "${OWN_PREFIX}%"`,
      updateRule: `${USERS} && ${manager("tenant.")} && ` +
        `${guard(["tenant", ...NATS_USER_SET_BY_BRIDGE])} && name !~ "${OWN_PREFIX}%" && ` +
        `(@request.body.name:isset = false || @request.body.name !~ "${OWN_PREFIX}%")`,
      deleteRule: `${USERS} && ${manager("tenant.")} && name !~ "${OWN_PREFIX}%"`,
    },
    rules: {
      listRule: `(${USERS} && ${member("tenant.")}) || (${ROUTER})`,
      viewRule: `(${USERS} && ${member("tenant.")}) || (${ROUTER})`,
      updateRule: `(${tenantWriter} && ${guard(["tenant", "status", "error"])}) || ` +
        `(${ROUTER} && ${guard(["tenant", "name", "enabled", "yaml"])})`,
    },
  };
}

const RULE_KEYS = ["listRule", "viewRule", "createRule", "updateRule", "deleteRule"];

// ---------------------------------------------------------------------------- rate limits

const AUTH_LIMITS = [
  // Per client address. A person mistyping, an agent enrolling or recovering, and the
  // bridge logging in at start stay far below; a password-guessing loop does not.
  { label: "users:auth", maxRequests: 10, duration: 60 },
  { label: "devices:auth", maxRequests: 10, duration: 60 },
  { label: "sidecars:auth", maxRequests: 10, duration: 60 },
  { label: "_superusers:auth", maxRequests: 10, duration: 60 },
  { label: "*:requestPasswordReset", maxRequests: 3, duration: 60 },
  { label: "*:requestOTP", maxRequests: 3, duration: 60 },
];

migrate((app) => {
  putRoles(app, ROLES, []);
  app.save(sidecarsCollection());

  const rules = securityRules();
  for (const id of [ID.tenants, ID.nats_roles, ID.nats_users, ID.rules]) {
    const collection = app.findCollectionByNameOrId(id);
    const wanted = rules[collection.name];
    for (const key of RULE_KEYS) {
      if (wanted[key] !== undefined) {
        collection[key] = wanted[key];
      }
    }
    app.save(collection);
  }
  // devices: the existing create/update rules stay as they are for devices themselves;
  // the users' branch gains "only owners/admins may set role".
  const devices = app.findCollectionByNameOrId(ID.devices);
  devices.createRule = `(${devices.createRule}) && ${rules.devices.extra}`;
  devices.updateRule = devices.updateRule.replace(
    '(@request.auth.collectionName = "users" &&',
    `(@request.auth.collectionName = "users" && ${rules.devices.extra} &&`,
  );
  app.save(devices);

  const settings = app.settings();
  settings.rateLimits.enabled = true;
  settings.rateLimits.rules = AUTH_LIMITS;
  app.save(settings);
}, (app) => {
  const settings = app.settings();
  settings.rateLimits.enabled = false;
  app.save(settings);

  const extra = securityRules().devices.extra;
  const devices = app.findCollectionByNameOrId(ID.devices);
  const suffix = `) && ${extra}`;
  if (devices.createRule.startsWith("(") && devices.createRule.endsWith(suffix)) {
    devices.createRule = devices.createRule.slice(1, devices.createRule.length - suffix.length);
  }
  devices.updateRule = devices.updateRule.replace(` ${extra} &&`, "");
  app.save(devices);

  // The earlier rules, as 1764000000_collections.js wrote them.
  const users = '@request.auth.collectionName = "users"';
  const m = (p) => member(p);
  const tenants = app.findCollectionByNameOrId(ID.tenants);
  tenants.listRule = `${users} && ${m("")}`;
  tenants.viewRule = `${users} && ${m("")}`;
  tenants.updateRule = `${users} && ${manager("")} && ` +
    guard(["slug", "active", "nats_account_public_key", "error"]);
  app.save(tenants);
  const roles = app.findCollectionByNameOrId(ID.nats_roles);
  roles.createRule = `${users} && tenant != "" && ${manager("tenant.")}`;
  roles.updateRule = `${users} && tenant != "" && ${manager("tenant.")} && ${guard(["tenant"])}`;
  app.save(roles);
  const natsUsers = app.findCollectionByNameOrId(ID.nats_users);
  natsUsers.listRule = `${users} && ${manager("tenant.")}`;
  natsUsers.viewRule = `${users} && ${manager("tenant.")}`;
  natsUsers.createRule = `${users} && ${manager("tenant.")} && ${guard(NATS_USER_SET_BY_BRIDGE)}`;
  natsUsers.updateRule = `${users} && ${manager("tenant.")} && ` +
    guard(["tenant", ...NATS_USER_SET_BY_BRIDGE]);
  natsUsers.deleteRule = `${users} && ${manager("tenant.")}`;
  app.save(natsUsers);
  const rulesCollection = app.findCollectionByNameOrId(ID.rules);
  rulesCollection.listRule = `${users} && ${m("tenant.")}`;
  rulesCollection.viewRule = `${users} && ${m("tenant.")}`;
  rulesCollection.updateRule = `${users} && ${writer("tenant.")} && ` +
    guard(["tenant", "status", "error"]);
  app.save(rulesCollection);

  app.delete(app.findCollectionByNameOrId(ID.sidecars));
  putRoles(app, OLD_ROLES, ["router"]);
});
