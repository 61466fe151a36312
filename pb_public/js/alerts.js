// Alerts: the tenant's live alert feed (`alerts.>` over NATS, kept in the page since it
// was opened, newest first).
import { esc } from "/js/ui.js";

export const KEEP = 200;

export function renderAlerts(state, main) {
  main.innerHTML = `<div class="card"><h2>Alerts <small class="muted">live</small></h2>
    <p class="muted" id="alerts-note"></p>
    <table id="alerts"><thead><tr><th>when</th><th>subject</th><th>alert</th></tr></thead>
    <tbody></tbody></table></div>`;
  const body = main.querySelector("tbody");
  const note = main.querySelector("#alerts-note");

  function draw() {
    note.textContent = state.nc ? `${state.alerts.length} since this page was opened` :
      "No NATS connection: alerts cannot be followed.";
    body.innerHTML = state.alerts.map((a) => `<tr><td>${esc(new Date(a.at)
      .toLocaleTimeString())}</td><td>${esc(a.subject)}</td><td><code>${esc(a.text)}</code>
      </td></tr>`).join("") || '<tr><td colspan="3" class="muted">no alert yet</td></tr>';
  }

  state.onAlert = draw;
  draw();
  return () => { state.onAlert = null; };
}
