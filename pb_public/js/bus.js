// The person's own NATS identity in the browser (SPEC §13): a key made here (its seed never
// leaves this page), registered as a person_keys row, answered by the bridge with a JWT
// carrying the membership's rights, then NATS over WebSocket with it. One login row per
// tab; the previous one (kept in sessionStorage) is deleted first, which revokes its key.
import { createUser, jwtAuthenticator, wsconnect } from "/vendor/nats.min.js";

const ROW_KEY = "cairn.dashboard.person_key";
const WAIT_MS = 15000;

export async function natsUrls(pb) {
  const override = new URLSearchParams(location.search).get("nats");
  if (override) return override.split(",");
  try {
    const cfg = await pb.send("/api/cairn/dashboard", {});
    if (cfg.nats_ws && cfg.nats_ws.length) return cfg.nats_ws;
  } catch (_) { /* an older server: the default below */ }
  return [`ws://${location.hostname}:9222`];
}

export async function forgetLogin(pb) {
  const previous = sessionStorage.getItem(ROW_KEY);
  sessionStorage.removeItem(ROW_KEY);
  if (!previous) return;
  try { await pb.collection("person_keys").delete(previous); } catch (_) { /* gone */ }
}

async function waitForJwt(pb, rowId) {
  const keys = pb.collection("person_keys");
  const answered = (row) => row.jwt || row.error;
  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (row) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      keys.unsubscribe(rowId).catch(() => {});
      row.jwt ? resolve(row) : reject(new Error(`NATS access refused: ${row.error}`));
    };
    const timer = setTimeout(() => {
      done = true;
      keys.unsubscribe(rowId).catch(() => {});
      reject(new Error("No NATS access: the bridge did not answer in 15 s (is cairn-bridge running?)"));
    }, WAIT_MS);
    keys.subscribe(rowId, (e) => { if (answered(e.record)) finish(e.record); })
      .then(() => keys.getOne(rowId))
      .then((row) => { if (answered(row)) finish(row); })
      .catch((err) => { if (!done) { done = true; clearTimeout(timer); reject(err); } });
  });
}

// -> { nc, role } ; onState(text, up) reports the connection's state in words
export async function connectBus(pb, membership, onState) {
  await forgetLogin(pb);
  const user = createUser();
  const me = pb.authStore.record;
  const row = await pb.collection("person_keys").create({
    user: me.id, membership: membership.id, tenant: membership.tenant,
    public_key: user.getPublicKey(), label: "dashboard",
  });
  sessionStorage.setItem(ROW_KEY, row.id);
  const granted = await waitForJwt(pb, row.id);
  const nc = await wsconnect({
    servers: await natsUrls(pb),
    authenticator: jwtAuthenticator(granted.jwt, user.getSeed()),
    inboxPrefix: `_INBOX_person_${me.id}`,
    name: `cairn-dashboard ${me.email || me.id}`,
    maxReconnectAttempts: -1,
  });
  onState("NATS: connected", true);
  (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect") onState("NATS: reconnecting…", false);
      if (s.type === "reconnect") onState("NATS: connected", true);
    }
  })().catch(() => {});
  nc.closed().then((err) => onState(err ? `NATS: closed (${err.message})` : "NATS: closed",
    false));
  return { nc, role: granted.role };
}

// A history answer from the bridge (cairn.history.<kind>.<user id>: telemetry, latest,
// alerts), read from the tenant's streams and sent to this person's inbox; an error in
// words otherwise. The person's JWT lets them ask only in their own name.
export async function askHistory(state, kind, body) {
  if (!state.nc) throw new Error("No NATS connection, so no history.");
  const me = state.pb.authStore.record;
  let msg;
  try {
    msg = await state.nc.request(`cairn.history.${kind}.${me.id}`, JSON.stringify(body),
      { timeout: 15000 });
  } catch (err) {
    throw new Error(`History is not available now (${err.message}); is cairn-bridge running?`);
  }
  let answer;
  try { answer = msg.json(); } catch (_) { throw new Error("History: the answer was not JSON."); }
  if (!answer || answer.status !== "ok") {
    throw new Error(`History: ${(answer && answer.error) || "no answer"}`);
  }
  return answer;
}
