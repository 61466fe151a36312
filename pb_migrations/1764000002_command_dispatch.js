/// <reference path="../pb_data/types.d.ts" />
// Command dispatch: "a command is never executed twice", even with two bridges.
// Also: Admin UI record pickers show a device's code and a role's or rule's name.
//
// The bridge writes one audit row `command.sent` (target `commands/<id>`) right before it
// sends a command; this unique partial index makes that write a claim that only one
// dispatcher can win. Also an index for the offline queue (device, status, created).

const AUDIT = "cairn_auditlog0";
const COMMANDS = "cairn_commands0";
const CLAIM_INDEX =
  "CREATE UNIQUE INDEX `idx_cairn_audit_command_sent` ON `audit_log` (`target`) " +
  "WHERE `action` = 'command.sent'";
const QUEUE_INDEX =
  "CREATE INDEX `idx_cairn_commands_queue` ON `commands` (`device`, `status`, `created`)";

function addIndex(app, id, index) {
  const collection = app.findCollectionByNameOrId(id);
  if (!collection.indexes.includes(index)) {
    collection.indexes.push(index);
    app.save(collection);
  }
}

const PRESENTABLE = [["cairn_devices00", "code"], ["cairn_natsrol00", "name"],
  ["cairn_rules0000", "name"], ["cairn_natsusr00", "name"]];

function setPresentable(app, value) {
  for (const [id, name] of PRESENTABLE) {
    const collection = app.findCollectionByNameOrId(id);
    const field = collection.fields.getByName(name);
    field.presentable = value;
    app.save(collection);
  }
}

function dropIndex(app, id, index) {
  const collection = app.findCollectionByNameOrId(id);
  collection.indexes = collection.indexes.filter((i) => i !== index);
  app.save(collection);
}

migrate(
  (app) => {
    addIndex(app, AUDIT, CLAIM_INDEX);
    addIndex(app, COMMANDS, QUEUE_INDEX);
    setPresentable(app, true);
  },
  (app) => {
    setPresentable(app, false);
    dropIndex(app, COMMANDS, QUEUE_INDEX);
    dropIndex(app, AUDIT, CLAIM_INDEX);
  },
);
