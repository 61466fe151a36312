/// <reference path="../pb_data/types.d.ts" />
// Global NATS roles (nats_roles rows with an empty tenant). `{code}` / `{tenant}` are expanded
// by the bridge before it signs a user JWT. Idempotent: an existing global role of the same
// name is left as it is. The down migration deletes the three global rows.

const ROLES_COLLECTION = "cairn_natsrol00";

const GLOBAL_ROLES = [
  {
    name: "agent",
    publish_allow: ["agents.{code}.>"],
    publish_deny: [],
    subscribe_allow: ["agents.{code}.cmd.>", "_INBOX.>"],
    subscribe_deny: [],
    allow_responses: true,
  },
  {
    name: "service",
    publish_allow: [">"],
    publish_deny: [],
    subscribe_allow: [">"],
    subscribe_deny: [],
    allow_responses: true,
  },
  {
    name: "viewer",
    publish_allow: [
      "_INBOX.>",
      "$JS.API.INFO",
      "$JS.API.STREAM.INFO.>",
      "$JS.API.STREAM.NAMES",
      "$JS.API.STREAM.LIST",
      "$JS.API.CONSUMER.CREATE.>",
      "$JS.API.CONSUMER.INFO.>",
      "$JS.API.CONSUMER.MSG.NEXT.>",
      "$JS.ACK.>",
    ],
    publish_deny: ["agents.*.cmd.>"],
    subscribe_allow: ["agents.>", "alerts.>", "_INBOX.>"],
    subscribe_deny: [],
    allow_responses: false,
  },
];

function findGlobal(app, name) {
  try {
    return app.findFirstRecordByFilter(ROLES_COLLECTION, "name = {:name} && tenant = ''", {
      name: name,
    });
  } catch (_) {
    return null; // not found
  }
}

migrate((app) => {
  const collection = app.findCollectionByNameOrId(ROLES_COLLECTION);
  for (const role of GLOBAL_ROLES) {
    if (findGlobal(app, role.name)) {
      continue;
    }
    const record = new Record(collection);
    for (const key of Object.keys(role)) {
      record.set(key, role[key]);
    }
    app.save(record);
  }
}, (app) => {
  for (const role of GLOBAL_ROLES) {
    const record = findGlobal(app, role.name);
    if (record) {
      app.delete(record);
    }
  }
});
