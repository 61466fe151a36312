/// <reference path="../pb_data/types.d.ts" />
// The Admin UI's switches start off and PocketBase has no default for a bool field, so a
// tenant made in that form is inactive unless its admin switches it on (through the API a
// new tenant is active unless the request says otherwise: pb_hooks/devices.pb.js). The
// help under the switch says so, where the admin is looking.

const ACTIVE_HELP = "Switch on for a tenant in use: this form's switch starts off. Off: the " +
  "tenant's NATS account is disabled and its devices are refused at enrollment, saying so.";
const OLD_HELP = "Off: the tenant's NATS account is disabled and its devices cannot enroll.";

function setActiveHelp(app, text) {
  const tenants = app.findCollectionByNameOrId("tenants");
  tenants.fields.getByName("active").help = text;
  app.save(tenants);
}

migrate((app) => setActiveHelp(app, ACTIVE_HELP), (app) => setActiveHelp(app, OLD_HELP));
