/// <reference path="../pb_data/types.d.ts" />
// Realtime keepalive (issue 11). PocketBase writes nothing on an idle SSE stream (no
// keepalive of its own; it just closes a connection after 5 idle minutes), so a silently
// dead link (half-open TCP, a proxy or NAT that dropped the connection without a FIN)
// looks exactly like a quiet one and no events, revocations included, arrive until the next
// full reconciliation. A follower (cairn_common/realtime.py) therefore asks for a ping on its
// own stream when it has heard nothing for a while:
//
//   POST /api/cairn/realtime-ping  {"clientId": "<the PB_CONNECT client id>"}
//
// sends one SSE message `event: cairn_ping` to that realtime client and answers 204. The
// message also resets PocketBase's idle timer, so a healthy idle link is not cut every 5
// minutes either. Only the client's own auth (the one that set its subscriptions) or a
// superuser may ping it: 401 without auth; 404 for an id that is not (or no longer)
// connected, which is how a follower on a half-open link learns that PocketBase has already
// forgotten it, and the same 404 for another auth's client (nobody learns whether someone
// else's client id is connected); 429 for a second ping to one client within
// MIN_INTERVAL_MS (followers ping after many seconds of silence; a flood is refused). Every message starts with "cairn realtime-ping:" so a
// caller tells these answers from the plain 404 of a PocketBase without this hook.
//
// Note: client.send() hands the message to the connection's writer and waits for it to take
// it; on a stuck connection the request waits, the caller's own timeout ends it.

routerAdd("POST", "/api/cairn/realtime-ping", (e) => {
  const body = e.requestInfo().body || {};
  const clientId = typeof body.clientId === "string" ? body.clientId : "";
  if (clientId === "" || clientId.length > 100) {
    throw new BadRequestError("cairn realtime-ping: clientId (the realtime client id) is required");
  }
  let client = null;
  try {
    client = $app.subscriptionsBroker().clientById(clientId);
  } catch (err) {
    client = null;
  }
  if (!client || client.isDiscarded()) {
    throw new NotFoundError("cairn realtime-ping: no realtime client with this id is connected");
  }
  if (!e.hasSuperuserAuth()) {
    const owner = client.get("auth");
    if (!owner || !e.auth || owner.id !== e.auth.id
        || owner.collection().id !== e.auth.collection().id) {
      throw new NotFoundError("cairn realtime-ping: no realtime client with this id is connected");
    }
  }
  const MIN_INTERVAL_MS = 900; // handlers run in their own VM: constants live in here
  const now = Date.now();
  const last = client.get("cairn_ping_at");
  if (typeof last === "number" && now - last < MIN_INTERVAL_MS) {
    throw new ApiError(429, "cairn realtime-ping: at most one ping per " + MIN_INTERVAL_MS +
      " ms per realtime client", {});
  }
  client.set("cairn_ping_at", now);
  client.send(new SubscriptionMessage({
    name: "cairn_ping",
    data: JSON.stringify({ at: new Date().toISOString() }),
  }));
  return e.noContent(204);
}, $apis.requireAuth());
