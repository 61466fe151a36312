// Alerts: the tenant's alerts of the last day from the ALERTS stream (through the bridge,
// cairn.history.alerts), then the live feed (`alerts.>` over NATS), newest first.
import { askHistory } from "/js/bus.js";
import { describe, esc } from "/js/ui.js";

export const KEEP = 200;

// A stored alert as the live feed shows it: a rule's text payload as text, JSON compact.
function textOf(data) {
  const keys = data && typeof data === "object" ? Object.keys(data) : [];
  return keys.length === 1 && keys[0] === "text" && typeof data.text === "string"
    ? data.text : JSON.stringify(data);
}

// Stored alerts first, then what arrived live meanwhile that the history did not hold.
function merged(stored, live) {
  const seen = new Set(stored.map((a) => `${a.subject} ${a.text}`));
  const fresh = live.filter((a) => !seen.has(`${a.subject} ${a.text}`));
  return [...fresh, ...stored].slice(0, KEEP);
}

export function renderAlerts(state, main) {
  main.innerHTML = `<div class="card"><h2>Alerts <small class="muted">last day, then live
    </small></h2><p class="muted" id="alerts-note"></p>
    <table id="alerts"><thead><tr><th>when</th><th>subject</th><th>alert</th></tr></thead>
    <tbody></tbody></table></div>`;
  const body = main.querySelector("tbody");
  const note = main.querySelector("#alerts-note");
  let alive = true;
  let problem = "";

  function draw() {
    note.textContent = !state.nc ? "No NATS connection: alerts cannot be followed." :
      problem || `${state.alerts.length} shown (at most ${KEEP})`;
    body.innerHTML = state.alerts.map((a) => `<tr><td>${esc(new Date(a.at)
      .toLocaleString())}</td><td>${esc(a.subject)}</td><td><code>${esc(a.text)}</code>
      </td></tr>`).join("") || '<tr><td colspan="3" class="muted">no alert yet</td></tr>';
  }

  state.onAlert = draw;
  draw();
  if (state.nc && !state.alertsLoaded) {
    askHistory(state, "alerts", { since: 86400, limit: KEEP }).then((answer) => {
      const stored = answer.messages.reverse().map((m) => ({ at: Date.parse(m.time),
        subject: m.subject, text: textOf(m.data) }));
      state.alerts = merged(stored, state.alerts);
      state.alertsLoaded = true;
      if (alive) draw();
    }).catch((err) => { problem = `${describe(err)} Showing live alerts only.`; if (alive) draw(); });
  }
  return () => { alive = false; state.onAlert = null; };
}
