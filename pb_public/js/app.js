// Cairn dashboard: login, tenant choice, routing. Rows come from PocketBase (REST and
// realtime, under its API rules); telemetry comes over NATS with the person's own JWT.
import PocketBase from "/vendor/pocketbase.es.mjs";
import { connectBus, forgetLogin } from "/js/bus.js";
import { renderFleet } from "/js/fleet.js";
import { renderAlerts, KEEP } from "/js/alerts.js";
import { renderDevice } from "/js/device.js";
import { renderRules } from "/js/rules.js";
import { describe, showError } from "/js/ui.js";

const pb = new PocketBase(location.origin);
const $ = (id) => document.getElementById(id);
const state = {
  pb, memberships: [], membership: null, nc: null, role: "", latest: new Map(),
  listeners: new Set(), cleanup: null, alerts: [], onAlert: null,
  // a device page of another of the person's tenants switches to it (device.js): its
  // telemetry and history come over that tenant's NATS account, matched by code
  switchTenant: (id) => { $("tenant").value = id; chooseTenant(id); },
};

function setBus(text, up) {
  const pill = $("bus");
  pill.textContent = text;
  pill.classList.toggle("up", up);
}

function loginView(message) {
  $("nav").hidden = true;
  $("main").innerHTML = `
    <form class="login" id="login-form">
      <h2>Sign in to Cairn</h2>
      <label>Email <input name="email" type="email" autocomplete="username" required></label>
      <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
      <button type="submit">Sign in</button>
    </form>`;
  if (message) showError(message);
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    try {
      await pb.collection("users").authWithPassword(form.get("email"), form.get("password"));
      showError(null);
      await start();
    } catch (err) {
      showError(err);
    }
  });
}

let choosing = 0;  // the latest choice: a slower connect of an earlier one is dropped

async function chooseTenant(id) {
  const mine = ++choosing;
  state.membership = state.memberships.find((m) => m.tenant === id) || state.memberships[0];
  localStorage.setItem("cairn.dashboard.tenant", state.membership.tenant);
  if (state.nc) { state.nc.close().catch(() => {}); state.nc = null; }
  state.latest.clear();
  state.alerts = [];
  state.alertsLoaded = false;
  setBus("NATS: connecting…", false);
  try {
    // an earlier choice's connection may still report (e.g. "closed"): only ours is shown
    const report = (text, up) => { if (mine === choosing) setBus(text, up); };
    const bus = await connectBus(pb, state.membership, report);
    if (mine !== choosing) { bus.nc.close().catch(() => {}); return; }
    state.nc = bus.nc;
    state.role = bus.role;
    state.nc.subscribe("agents.*.telemetry.system", {
      // a device's document may be anything: a throw here would stop the connection
      // reading (nats.js does not catch callbacks), so nothing may escape
      callback: (err, msg) => {
        if (err) return;
        try {
          const body = msg.json();
          if (!body || typeof body !== "object" || Array.isArray(body)) return;
          const code = msg.subject.split(".")[1];
          state.latest.set(code, { ...body, received: Date.now() });
          for (const fn of state.listeners) {
            try { fn(code, body); } catch (e) { console.warn("telemetry view", e); }
          }
        } catch (_) { /* not JSON: nothing to show */ }
      },
    });
    state.nc.subscribe("alerts.>", {
      callback: (err, msg) => {
        if (err) return;
        try {
          let text = msg.string();
          try { text = JSON.stringify(JSON.parse(text)); } catch (_) { /* shown as sent */ }
          state.alerts.unshift({ at: Date.now(), subject: msg.subject, text });
          state.alerts.length = Math.min(state.alerts.length, KEEP);
          if (state.onAlert) state.onAlert();
        } catch (e) { console.warn("alert view", e); }
      },
    });
  } catch (err) {
    if (mine !== choosing) return;
    setBus("NATS: no access", false);
    showError(err);
  }
  route();
}

function route() {
  if (state.cleanup) { state.cleanup(); state.cleanup = null; }
  const main = $("main");
  const match = location.hash.match(/^#\/device\/([a-z0-9]+)$/);
  if (match) state.cleanup = renderDevice(state, main, match[1]);
  else if (location.hash === "#/alerts") state.cleanup = renderAlerts(state, main);
  else if (location.hash === "#/rules") state.cleanup = renderRules(state, main);
  else state.cleanup = renderFleet(state, main);
}

async function start() {
  const me = pb.authStore.record;
  if (!pb.authStore.isValid || !me || me.collectionName !== "users") return loginView();
  try {
    state.memberships = await pb.collection("memberships").getFullList({
      filter: pb.filter("user = {:id}", { id: me.id }), expand: "tenant" });
  } catch (err) {
    pb.authStore.clear();
    return loginView(describe(err));
  }
  if (!state.memberships.length) {
    $("main").innerHTML = "";
    return showError("You are a member of no tenant yet: ask an owner or admin to add you.");
  }
  $("nav").hidden = false;
  $("who").textContent = me.email;
  const select = $("tenant");
  select.innerHTML = "";
  for (const m of state.memberships) {
    const t = m.expand && m.expand.tenant;
    const option = new Option(`${t ? t.name : m.tenant} (${m.role})`, m.tenant);
    select.add(option);
  }
  const saved = localStorage.getItem("cairn.dashboard.tenant");
  const first = state.memberships.some((m) => m.tenant === saved) ? saved : state.memberships[0].tenant;
  select.value = first;
  select.onchange = () => chooseTenant(select.value);
  await chooseTenant(first);
}

$("logout").addEventListener("click", async () => {
  await forgetLogin(pb);
  if (state.nc) await state.nc.close().catch(() => {});
  pb.authStore.clear();
  location.hash = "#/";
  loginView();
});
window.addEventListener("hashchange", () => { if (state.membership) route(); });
start().catch(showError);
