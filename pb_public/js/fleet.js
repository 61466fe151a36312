// Fleet: every device of the tenant, live. Rows come from PocketBase (list, then realtime
// updates); the CPU / memory / disk columns from NATS telemetry. Filtering hides rows
// instead of rebuilding them, so a 10,000-device list stays quick to filter.
import { ago, describe, esc, showError } from "/js/ui.js";

const FIELDS = "id,code,name,hostname,os,agent_version,online,last_seen,status";

function diskFree(body) {
  const disks = Array.isArray(body.disks) ? body.disks : [];
  const root = disks.find((d) => d.mount === "/") || disks[0];
  return root && typeof root.free_percent === "number" ? root.free_percent.toFixed(0) : "";
}

function fmt(value) {
  return typeof value === "number" ? value.toFixed(1) : "";
}

export function renderFleet(state, main) {
  const { pb } = state;
  const tenant = state.membership.tenant;
  main.innerHTML = `
    <div class="filters">
      <input id="q" type="search" placeholder="Search code, name, host, OS" aria-label="Search">
      <select id="f-online" aria-label="Online">
        <option value="">online and offline</option><option value="1">online</option>
        <option value="0">offline</option></select>
      <select id="f-os" aria-label="OS"><option value="">any OS</option></select>
      <span id="count" class="muted">loading devices…</span>
    </div>
    <table id="fleet"><thead><tr><th>Device</th><th>Name</th><th>State</th><th>Last seen</th>
      <th>OS</th><th>Agent</th><th>CPU %</th><th>Memory %</th><th>Disk free %</th></tr></thead>
      <tbody></tbody></table>`;
  const body = main.querySelector("tbody");
  const rows = new Map(); // code -> { record, tr }
  let alive = true;

  function fill(tr, record) {
    const latest = state.latest.get(record.code) || {};
    tr.dataset.code = record.code;
    tr.dataset.online = record.online ? "1" : "0";
    tr.dataset.os = record.os || "";
    tr.dataset.text = [record.code, record.name, record.hostname, record.os]
      .join(" ").toLowerCase();
    tr.innerHTML = `<td><a href="#/device/${esc(record.id)}">${esc(record.code)}</a></td>
      <td>${esc(record.name)}</td>
      <td class="${record.online ? "online" : "offline"}">${record.status === "disabled"
        ? "disabled" : record.online ? "online" : "offline"}</td>
      <td class="seen">${esc(ago(record.last_seen))}</td><td>${esc(record.os)}</td>
      <td>${esc(record.agent_version)}</td>
      <td class="num cpu">${fmt(latest.cpu_percent)}</td>
      <td class="num mem">${fmt(latest.memory_used_percent)}</td>
      <td class="num disk">${diskFree(latest)}</td>`;
  }

  function applyFilter() {
    const q = main.querySelector("#q").value.trim().toLowerCase();
    const online = main.querySelector("#f-online").value;
    const os = main.querySelector("#f-os").value;
    let shown = 0;
    for (const { tr } of rows.values()) {
      const hit = (!q || tr.dataset.text.includes(q)) &&
        (!online || tr.dataset.online === online) && (!os || tr.dataset.os === os);
      tr.hidden = !hit;
      if (hit) shown += 1;
    }
    main.querySelector("#count").textContent = `${shown} of ${rows.size} devices`;
  }

  function osOptions() {
    const select = main.querySelector("#f-os");
    const chosen = select.value;
    const names = [...new Set([...rows.values()].map((r) => r.record.os).filter(Boolean))].sort();
    select.innerHTML = '<option value="">any OS</option>' +
      names.map((n) => `<option>${esc(n)}</option>`).join("");
    select.value = names.includes(chosen) ? chosen : "";
  }

  function put(record) {
    let entry = rows.get(record.code);
    if (!entry) {
      entry = { record, tr: document.createElement("tr") };
      rows.set(record.code, entry);
      body.appendChild(entry.tr);
    }
    entry.record = record;
    fill(entry.tr, record);
  }

  function onTelemetry(code, payload) {
    const entry = rows.get(code);
    if (!entry) return;
    entry.tr.querySelector(".cpu").textContent = fmt(payload.cpu_percent);
    entry.tr.querySelector(".mem").textContent = fmt(payload.memory_used_percent);
    entry.tr.querySelector(".disk").textContent = diskFree(payload);
  }

  for (const id of ["q", "f-online", "f-os"]) {
    main.querySelector(`#${id}`).addEventListener("input", applyFilter);
  }
  state.listeners.add(onTelemetry);
  const devices = pb.collection("devices");
  const started = performance.now();
  devices.getFullList({ filter: pb.filter("tenant = {:t}", { t: tenant }), sort: "code",
    fields: FIELDS, batch: 1000 })
    .then((list) => {
      if (!alive) return;
      const fragment = document.createDocumentFragment();
      for (const record of list) {
        const tr = document.createElement("tr");
        fill(tr, record);
        rows.set(record.code, { record, tr });
        fragment.appendChild(tr);
      }
      body.appendChild(fragment);
      osOptions();
      applyFilter();
      main.querySelector("#fleet").dataset.renderedMs = String(performance.now() - started);
    })
    .catch((err) => showError(`Devices could not be loaded: ${describe(err)}`));
  devices.subscribe("*", (e) => {
    if (!alive || e.record.tenant !== tenant) return;
    if (e.action === "delete") {
      const entry = rows.get(e.record.code);
      if (entry) { entry.tr.remove(); rows.delete(e.record.code); }
    } else {
      put(e.record);
    }
    applyFilter();
  }, { fields: FIELDS + ",tenant" }).catch((err) => showError(describe(err)));
  const ticker = setInterval(() => {
    for (const { record, tr } of rows.values()) {
      if (!tr.hidden) tr.querySelector(".seen").textContent = ago(record.last_seen);
    }
  }, 10000);
  return () => {
    alive = false;
    clearInterval(ticker);
    state.listeners.delete(onTelemetry);
    devices.unsubscribe("*").catch(() => {});
  };
}
