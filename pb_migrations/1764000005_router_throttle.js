/// <reference path="../pb_data/types.d.ts" />
// The rule router's global role may use the tenant's CAIRN_THROTTLE KV bucket (made by the
// bridge, pb_hooks_bridge/streams.py), where routers of one identity share their throttle
// windows (rule_router/shared_throttle.py): read its own identity's keys with direct gets
// and write them. `{code}` is the router's identity name (its nats_users row), so routers of
// different identities keep apart, and the bucket is nothing else's: no other role gains any
// right (devices are confined to `agents.<code>.>` and their inbox, viewers publish nothing,
// `service` keeps what it had). Keys are written through `$KV.CAIRN_THROTTLE.{code}.>`; the
// PubAck and the direct-get answers come back to the router's own inbox, which it already
// subscribes to. No stream info or purge: the router neither makes nor inspects the bucket.
//
// `down` takes the two subjects out again.

const ROLES_COLLECTION = "cairn_natsrol00";
const THROTTLE_SUBJECTS = [
  "$KV.CAIRN_THROTTLE.{code}.>",
  "$JS.API.DIRECT.GET.KV_CAIRN_THROTTLE.$KV.CAIRN_THROTTLE.{code}.>",
];

function routerRole(app) {
  try {
    return app.findFirstRecordByFilter(ROLES_COLLECTION, "name = 'router' && tenant = ''");
  } catch (_) {
    return null; // not seeded (1764000003 makes it): nothing to change
  }
}

function setSubjects(app, add) {
  const record = routerRole(app);
  if (!record) {
    return;
  }
  const current = JSON.parse(record.getString("publish_allow") || "[]");
  const kept = current.filter((s) => THROTTLE_SUBJECTS.indexOf(s) < 0);
  record.set("publish_allow", add ? kept.concat(THROTTLE_SUBJECTS) : kept);
  app.save(record);
}

migrate((app) => setSubjects(app, true), (app) => setSubjects(app, false));
