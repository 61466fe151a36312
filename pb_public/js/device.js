// One device: its row, charts over the last hour or day (history from the bridge, then
// live NATS telemetry), health and inventory, its recent commands, and buttons that create
// `commands` rows (so API rules, audit and the offline queue apply); a command's result
// shows when the bridge writes it back.
import { askHistory } from "/js/bus.js";
import { WINDOWS, deviceCharts } from "/js/device_charts.js";
import { allowedOf, healthPanel, inventoryPanel } from "/js/device_panels.js";
import { ago, canCommand, describe, esc, showError } from "/js/ui.js";

const FINAL = ["succeeded", "failed", "expired"];

function commandLine(row) {
  const result = row.response && Object.keys(row.response).length
    ? JSON.stringify(row.response, null, 2) : row.error || "";
  return `<tr data-id="${esc(row.id)}"><td>${esc(row.command)}</td>
    <td class="status">${esc(row.status || "queued")}</td><td>${esc(ago(row.created))}</td>
    <td><pre class="result">${esc(result)}</pre></td></tr>`;
}

// The exec and service forms: pickers of what the agent allows, or a text field for an
// agent whose inventory does not say (the agent refuses anything else either way).
function actionForms(allowed) {
  const pick = (name, label, values, placeholder) => (values && values.length
    ? `<select name="${name}" aria-label="${label}">${values.map((v) =>
      `<option>${esc(v)}</option>`).join("")}</select>`
    : `<input name="${name}" placeholder="${placeholder}" aria-label="${label}">`);
  return `
    <form id="exec-form">${pick("command", "exec command", allowed && allowed.commands,
    "whitelisted command or script")}<button>Exec</button></form>
    <form id="service-form">${pick("service_name", "service name",
    allowed && allowed.services, "service")}<select name="action" aria-label="service action">
      <option>status</option><option>restart</option><option>start</option>
      <option>stop</option></select><button>Service</button></form>`;
}

export function renderDevice(state, main, id) {
  const { pb } = state;
  const me = pb.authStore.record;
  let alive = true;
  let charts = null;
  let code = "";
  main.innerHTML = "<p>Loading device…</p>";
  const commands = pb.collection("commands");
  const $ = (sel) => main.querySelector(sel);

  function showPanel(command, record) {
    if (command === "health") $("#health").innerHTML = healthPanel(record.response, record.updated);
    if (command === "inventory") showInventory(record.response, record.updated);
  }

  async function run(command, payload) {
    const out = $("#outcome");
    out.textContent = `${command}: sending…`;
    out.dataset.status = "";  // the last command's outcome no longer stands
    try {
      const row = await commands.create({ tenant: state.membership.tenant, device: id, command,
        payload, requested_by: me.id });
      let shown = "";
      const show = (record) => {
        if (!alive || FINAL.includes(shown)) return;
        shown = record.status || "queued";
        const done = FINAL.includes(shown);
        const result = done && record.response ? JSON.stringify(record.response) : "";
        out.textContent = `${command}: ${shown}` + (result ? ` — ${result.length > 300
          ? `${result.slice(0, 300)}… (whole result below)` : result}` : "") +
          (done && record.error ? ` — ${record.error}` : "");
        out.dataset.status = shown;
        if (shown === "succeeded") showPanel(command, record);
        refreshCommands().catch(() => {});
        if (done) commands.unsubscribe(row.id).catch(() => {});
      };
      show(row);
      await commands.subscribe(row.id, (e) => show(e.record));
      // the bridge may have answered before the subscription was in place
      show(await commands.getOne(row.id, { requestKey: null }));
    } catch (err) {
      out.textContent = `${command}: refused: ${describe(err)}`;
    }
  }

  async function refreshCommands() {
    const list = await commands.getList(1, 10, { filter: pb.filter("device = {:id}", { id }),
      sort: "-created", requestKey: null });
    const body = $("#commands tbody");
    if (body) body.innerHTML = list.items.map(commandLine).join("") ||
      '<tr><td colspan="4" class="muted">no commands yet</td></tr>';
  }

  async function lastHealth() {
    const list = await commands.getList(1, 1, { requestKey: null, sort: "-created",
      filter: pb.filter('device = {:id} && command = "health" && status = "succeeded"', { id }) });
    const row = list.items[0];
    $("#health").innerHTML = healthPanel(row && row.response, row && row.updated);
  }

  function showInventory(doc, when) {
    $("#inventory").innerHTML = inventoryPanel(doc, when);
    const actions = $("#action-forms");
    if (actions && allowedOf(doc)) { actions.innerHTML = actionForms(allowedOf(doc)); bindForms(); }
  }

  let asked = 0;  // the window last asked for wins, whichever answer comes first
  async function loadWindow(name) {
    const win = WINDOWS[name];
    const mine = ++asked;
    const note = $("#chart-note");
    for (const b of main.querySelectorAll("[data-window]")) {
      b.classList.toggle("chosen", b.dataset.window === name);
    }
    note.textContent = "reading history…";
    try {
      const answer = await askHistory(state, "telemetry",
        { device: code, since: win.since, points: win.points });
      if (!alive || mine !== asked) return;
      charts.load(answer.messages, win.since);
      note.textContent = `${answer.messages.length} stored points` +
        (answer.truncated ? " (more than fit in one answer)" : "") + ", then live";
    } catch (err) {
      if (!alive || mine !== asked) return;
      charts.load([], win.since);
      note.textContent = `${describe(err)} Showing live figures only.`;
    }
  }

  function bindForms() {
    const exec = $("#exec-form");
    if (exec) exec.addEventListener("submit", (ev) => {
      ev.preventDefault();
      run("exec", { command: new FormData(exec).get("command") });
    });
    const service = $("#service-form");
    if (service) service.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const form = new FormData(service);
      run("service", { service_name: form.get("service_name"), action: form.get("action") });
    });
  }

  pb.collection("devices").getOne(id).then((device) => {
    if (!alive) return;
    if (device.tenant !== state.membership.tenant) {
      // codes are unique per tenant only: the chosen tenant's bus would show its own
      // device of this code, so the page follows the device's tenant
      if (!state.memberships.some((m) => m.tenant === device.tenant)) {
        main.innerHTML = "<p>This device belongs to a tenant you are not a member of.</p>";
        return;
      }
      main.innerHTML = "<p>Switching to the device's tenant…</p>";
      state.switchTenant(device.tenant);
      return;
    }
    code = device.code;
    const buttons = canCommand(state) ? `
      <div class="actions" id="actions">
        <button data-cmd="ping">Ping</button><button data-cmd="health">Health</button>
        <button data-cmd="inventory">Inventory</button>
        <span id="action-forms" class="actions">${actionForms(null)}</span>
      </div><p id="outcome" class="muted"></p>` :
      '<p class="muted">Viewers see this device; running commands needs an operator role.</p>';
    main.innerHTML = `
      <div class="card"><h2>${esc(device.name || device.code)} <small class="muted">
        ${esc(device.code)}</small></h2>
        <p><span class="${device.online ? "online" : "offline"}">${device.online ? "online"
          : "offline"}</span> · last seen ${esc(ago(device.last_seen))} · ${esc(device.os)}
          · agent ${esc(device.agent_version)} · host ${esc(device.hostname)}
          · status ${esc(device.status || "pending")}</p>${buttons}</div>
      <div class="card"><h3>Telemetry <span class="actions windows">${Object.entries(WINDOWS)
        .map(([k, w]) => `<button data-window="${k}">${w.label}</button>`).join("")}</span></h3>
        <p class="muted" id="chart-note"></p>
        <div id="chart"></div><div id="network-chart"></div></div>
      <div class="columns">
        <div class="card"><h3>Health</h3><div id="health"><p class="muted">…</p></div></div>
        <div class="card"><h3>Inventory</h3><div id="inventory"><p class="muted">…</p></div></div>
      </div>
      <div class="card"><h3>Recent commands</h3><table id="commands"><thead><tr><th>command</th>
        <th>status</th><th>when</th><th>result</th></tr></thead><tbody></tbody></table></div>`;
    charts = deviceCharts($("#chart"), $("#network-chart"));
    const latest = state.latest.get(device.code);
    if (latest) charts.add(latest);
    state.listeners.add(onTelemetry);
    state.deviceCode = device.code;
    for (const button of main.querySelectorAll("[data-cmd]")) {
      button.addEventListener("click", () => run(button.dataset.cmd, {}));
    }
    for (const button of main.querySelectorAll("[data-window]")) {
      button.addEventListener("click", () => loadWindow(button.dataset.window));
    }
    bindForms();
    loadWindow("hour");
    refreshCommands().catch((err) => showError(describe(err)));
    lastHealth().catch((err) => { $("#health").textContent = describe(err); });
    askHistory(state, "latest", { device: code, subject: "inventory" })
      .then((answer) => alive && showInventory(answer.message && answer.message.data,
        answer.message && answer.message.time))
      .catch((err) => { if (alive) $("#inventory").textContent = describe(err); });
  }).catch((err) => { main.innerHTML = ""; showError(`This device: ${describe(err)}`); });

  function onTelemetry(deviceCode, body) {
    if (charts && deviceCode === state.deviceCode) charts.add(body);
  }

  return () => {
    alive = false;
    state.listeners.delete(onTelemetry);
    if (charts) charts.destroy();
  };
}
