// One device: its row, a live chart of CPU and memory from NATS telemetry, its recent
// commands, and buttons that create `commands` rows (so API rules, audit and the offline
// queue apply); a command's result shows when the bridge writes it back.
import { ago, canCommand, describe, esc, showError } from "/js/ui.js";

const FINAL = ["succeeded", "failed", "expired"];
const MAX_POINTS = 720;

function chart(el) {
  const data = [[], [], []];
  const plot = new window.uPlot({
    width: Math.min(900, el.clientWidth || 900), height: 240,
    series: [{}, { label: "CPU %", stroke: "#2f6fdf" }, { label: "Memory %", stroke: "#c2410c" }],
    scales: { y: { range: [0, 100] } },
  }, data, el);
  return {
    add(body) {
      const t = Date.parse(body.timestamp || "") / 1000 || Date.now() / 1000;
      if (typeof body.cpu_percent !== "number") return;
      data[0].push(t); data[1].push(body.cpu_percent);
      data[2].push(typeof body.memory_used_percent === "number" ? body.memory_used_percent : null);
      if (data[0].length > MAX_POINTS) data.forEach((s) => s.shift());
      plot.setData(data);
      el.dataset.points = String(data[0].length);
    },
    destroy() { plot.destroy(); },
  };
}

function commandLine(row) {
  const result = row.response && Object.keys(row.response).length
    ? JSON.stringify(row.response, null, 2) : row.error || "";
  return `<tr data-id="${esc(row.id)}"><td>${esc(row.command)}</td>
    <td class="status">${esc(row.status || "queued")}</td><td>${esc(ago(row.created))}</td>
    <td><pre class="result">${esc(result)}</pre></td></tr>`;
}

export function renderDevice(state, main, id) {
  const { pb } = state;
  const me = pb.authStore.record;
  let alive = true;
  let plot = null;
  main.innerHTML = "<p>Loading device…</p>";
  const commands = pb.collection("commands");

  async function run(command, payload) {
    const out = main.querySelector("#outcome");
    out.textContent = `${command}: sending…`;
    try {
      const row = await commands.create({ tenant: state.membership.tenant, device: id, command,
        payload, requested_by: me.id });
      let shown = "";
      const show = (record) => {
        if (!alive || FINAL.includes(shown)) return;
        shown = record.status || "queued";
        const done = FINAL.includes(shown);
        out.textContent = `${command}: ${shown}` + (done && record.response
          ? ` — ${JSON.stringify(record.response)}` : "") +
          (done && record.error ? ` — ${record.error}` : "");
        out.dataset.status = shown;
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
    const body = main.querySelector("#commands tbody");
    if (body) body.innerHTML = list.items.map(commandLine).join("") ||
      '<tr><td colspan="4" class="muted">no commands yet</td></tr>';
  }

  pb.collection("devices").getOne(id).then((device) => {
    if (!alive) return;
    const buttons = canCommand(state) ? `
      <div class="actions" id="actions">
        <button data-cmd="ping">Ping</button><button data-cmd="health">Health</button>
        <button data-cmd="inventory">Inventory</button>
        <form id="exec-form"><input name="command" placeholder="whitelisted command or script"
          aria-label="exec command"><button>Exec</button></form>
        <form id="service-form"><input name="service_name" placeholder="service"
          aria-label="service name"><select name="action" aria-label="service action">
          <option>status</option><option>restart</option><option>start</option>
          <option>stop</option></select><button>Service</button></form>
      </div><p id="outcome" class="muted"></p>` :
      '<p class="muted">Viewers see this device; running commands needs an operator role.</p>';
    main.innerHTML = `
      <div class="card"><h2>${esc(device.name || device.code)} <small class="muted">
        ${esc(device.code)}</small></h2>
        <p><span class="${device.online ? "online" : "offline"}">${device.online ? "online"
          : "offline"}</span> · last seen ${esc(ago(device.last_seen))} · ${esc(device.os)}
          · agent ${esc(device.agent_version)} · host ${esc(device.hostname)}
          · status ${esc(device.status || "pending")}</p>${buttons}</div>
      <div class="card"><h3>CPU and memory (live)</h3><div id="chart"></div></div>
      <div class="card"><h3>Recent commands</h3><table id="commands"><thead><tr><th>command</th>
        <th>status</th><th>when</th><th>result</th></tr></thead><tbody></tbody></table></div>`;
    plot = chart(main.querySelector("#chart"));
    const latest = state.latest.get(device.code);
    if (latest) plot.add(latest);
    state.listeners.add(onTelemetry);
    state.deviceCode = device.code;
    for (const button of main.querySelectorAll("[data-cmd]")) {
      button.addEventListener("click", () => run(button.dataset.cmd, {}));
    }
    const exec = main.querySelector("#exec-form");
    if (exec) exec.addEventListener("submit", (ev) => {
      ev.preventDefault();
      run("exec", { command: new FormData(exec).get("command") });
    });
    const service = main.querySelector("#service-form");
    if (service) service.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const form = new FormData(service);
      run("service", { service_name: form.get("service_name"), action: form.get("action") });
    });
    refreshCommands().catch((err) => showError(describe(err)));
  }).catch((err) => { main.innerHTML = ""; showError(`This device: ${describe(err)}`); });

  function onTelemetry(code, body) {
    if (plot && code === state.deviceCode) plot.add(body);
  }

  return () => {
    alive = false;
    state.listeners.delete(onTelemetry);
    if (plot) plot.destroy();
  };
}
