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
// superuser may ping it: 401 without auth, 403 for another auth's client, 404 for an id that
// is not (or no longer) connected, which is how a follower on a half-open link learns that
// PocketBase has already forgotten it. Every message starts with "cairn realtime-ping:" so a
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
      throw new ForbiddenError("cairn realtime-ping: this realtime client belongs to another auth");
    }
  }
  client.send(new SubscriptionMessage({
    name: "cairn_ping",
    data: JSON.stringify({ at: new Date().toISOString() }),
  }));
  return e.noContent(204);
}, $apis.requireAuth());
