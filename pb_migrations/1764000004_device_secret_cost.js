/// <reference path="../pb_data/types.d.ts" />
// Device enrollment secrets are hashed with bcrypt cost 6 instead of PocketBase's default 10
// (docs/decisions/0005-device-secret-hash-cost.md).
//
// Device secrets are generated high-entropy tokens (`cairn-bridge devices-bulk`:
// secrets.token_urlsafe(24), 192 bits), so offline guessing is infeasible at any cost, while
// the cost bounds how fast PocketBase can create devices in bulk (a batch hashes its rows one
// after another inside one transaction: ~8 rows/s at cost 10 on 2 cores, ~110/s at cost 6)
// and how fast a fleet can log in again after an outage (~32 logins/s at cost 10, ~270/s at
// cost 6). People (`users`) and superusers keep the default cost.
//
// Only new hashes use the new cost: a secret set before this migration keeps its cost-10
// hash until it is changed. `down` restores the default (0 = bcrypt.DefaultCost).

const DEVICES = "cairn_devices00";
const DEVICE_SECRET_COST = 6;

function setCost(app, cost) {
  const collection = app.findCollectionByNameOrId(DEVICES);
  const field = collection.fields.getByName("password");
  field.cost = cost;
  app.save(collection);
}

migrate(
  (app) => setCost(app, DEVICE_SECRET_COST),
  (app) => setCost(app, 0),
);
