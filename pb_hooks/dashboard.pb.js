/// <reference path="../pb_data/types.d.ts" />
// What the dashboard (pb_public/) needs to know before anyone logs in: where NATS over
// WebSocket listens. The launcher passes CAIRN_NATS_WS_URLS (comma-separated, every node);
// without it the dashboard tries port 9222 on the host it was loaded from. Nothing secret.

routerAdd("GET", "/api/cairn/dashboard", (e) => {
  const raw = String($os.getenv("CAIRN_NATS_WS_URLS") || "");
  const urls = raw.split(",").map((s) => s.trim()).filter((s) => s !== "");
  return e.json(200, { nats_ws: urls });
});
