// Fleet: every device of the tenant, live. Rows come from PocketBase (pages fetched side by
// side, then realtime updates); the CPU / memory / disk columns from NATS telemetry.
// Search and filters run over the data; the table holds at most SHOWN rows at a time ("show
// more" adds the next ones), and telemetry touches only those, at most four times a
// second: a 10,000-device tenant stays as quick as a small one.
import { ago, describe, esc, showError } from "/js/ui.js";

const FIELDS = "id,code,name,hostname,os,agent_version,online,last_seen,status";
const PAGE = 1000; // devices per request
const PARALLEL = 4; // requests at once
const SHOWN = 500; // rows in the table at a time
const DRAW_EVERY_MS = 250; // telemetry drawn at most four times a second

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
      <tbody></tbody></table>
    <p><button id="more" type="button" hidden>Show more</button></p>`;
  const tbody = main.querySelector("tbody");
  const records = new Map(); // code -> record (every device of the tenant)
  const shown = new Map(); // code -> tr (the rows in the table now)
  const pending = new Map(); // code -> telemetry not yet drawn
  let matches = [];
  let limit = SHOWN;
  let loading = true;
  let alive = true;
  let frame = 0;
  let lastDraw = 0;
  let dirty = false;

  function fill(tr, record) {
    const latest = state.latest.get(record.code) || {};
    tr.dataset.code = record.code;
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

  function text(record) {
    return [record.code, record.name, record.hostname, record.os].join(" ").toLowerCase();
  }

  function select() {
    const q = main.querySelector("#q").value.trim().toLowerCase();
    const online = main.querySelector("#f-online").value;
    const os = main.querySelector("#f-os").value;
    matches = [];
    for (const record of records.values()) {
      if ((!q || record._text.includes(q)) && (!online || (record.online ? "1" : "0") === online)
          && (!os || record.os === os)) matches.push(record);
    }
  }

  function draw() {
    tbody.textContent = "";
    shown.clear();
    const fragment = document.createDocumentFragment();
    for (const record of matches.slice(0, limit)) {
      const tr = document.createElement("tr");
      fill(tr, record);
      shown.set(record.code, tr);
      fragment.appendChild(tr);
    }
    tbody.appendChild(fragment);
    const more = main.querySelector("#more");
    more.hidden = matches.length <= limit;
    more.textContent = `Show more (${matches.length - limit} not shown)`;
    main.querySelector("#count").textContent = `${matches.length} of ${records.size} devices` +
      (loading ? " (loading…)" : "");
  }

  function refresh() {
    limit = SHOWN;
    select();
    draw();
  }

  function osOptions() {
    const box = main.querySelector("#f-os");
    const chosen = box.value;
    const names = [...new Set([...records.values()].map((r) => r.os).filter(Boolean))].sort();
    box.innerHTML = '<option value="">any OS</option>' +
      names.map((n) => `<option>${esc(n)}</option>`).join("");
    box.value = names.includes(chosen) ? chosen : "";
  }

  function add(list) {
    for (const record of list) {
      record._text = text(record);
      records.set(record.code, record);
    }
  }

  // batched: telemetry into the rows shown, and a re-selection after
  // realtime changes that can move rows in or out of the filter
  // (at most DRAW_EVERY_MS apart: each draw re-lays the table out once, whatever it holds)
  function schedule() {
    if (frame) return;
    const wait = Math.max(0, lastDraw + DRAW_EVERY_MS - performance.now());
    frame = setTimeout(() => requestAnimationFrame(flush), wait);
  }
  function flush() {
    frame = 0;
    lastDraw = performance.now();
    if (!alive) return;
    if (dirty) { dirty = false; select(); draw(); }
    for (const [code, payload] of pending) {
      const tr = shown.get(code);
      if (!tr) continue;
      tr.querySelector(".cpu").textContent = fmt(payload.cpu_percent);
      tr.querySelector(".mem").textContent = fmt(payload.memory_used_percent);
      tr.querySelector(".disk").textContent = diskFree(payload);
    }
    pending.clear();
  }

  function onTelemetry(code, payload) {
    if (!shown.has(code)) return;
    pending.set(code, payload);
    schedule();
  }

  async function load() {
    const devices = pb.collection("devices");
    // requestKey null: the SDK would otherwise cancel a request when the next one to the
    // same path starts (its auto-cancellation), and these run side by side
    const options = { filter: pb.filter("tenant = {:t}", { t: tenant }), sort: "code",
      fields: FIELDS, requestKey: null };
    const started = performance.now();
    const first = await devices.getList(1, PAGE, options);
    if (!alive) return;
    add(first.items);
    refresh();
    main.querySelector("#fleet").dataset.firstMs = String(performance.now() - started);
    const pages = [];
    for (let page = 2; page <= first.totalPages; page += 1) pages.push(page);
    const results = new Map();
    await Promise.all(Array.from({ length: PARALLEL }, async () => {
      while (pages.length && alive) {
        const page = pages.shift();
        results.set(page, (await devices.getList(page, PAGE, { ...options, skipTotal: true }))
          .items);
      }
    }));
    if (!alive) return;
    for (let page = 2; page <= first.totalPages; page += 1) add(results.get(page) || []);
    loading = false;
    osOptions();
    select();
    draw();
    main.querySelector("#fleet").dataset.renderedMs = String(performance.now() - started);
  }

  for (const id of ["q", "f-online", "f-os"]) {
    main.querySelector(`#${id}`).addEventListener("input", refresh);
  }
  main.querySelector("#more").addEventListener("click", () => { limit += SHOWN; draw(); });
  state.listeners.add(onTelemetry);
  load().catch((err) => showError(`Devices could not be loaded: ${describe(err)}`));
  const devices = pb.collection("devices");
  devices.subscribe("*", (e) => {
    if (!alive || e.record.tenant !== tenant) return;
    const before = records.get(e.record.code);
    if (e.action === "delete") {
      records.delete(e.record.code);
      dirty = true;
    } else {
      e.record._text = text(e.record);
      records.set(e.record.code, e.record);
      const tr = shown.get(e.record.code);
      if (tr) fill(tr, e.record);
      if (!before || before.online !== e.record.online || before.os !== e.record.os ||
          before._text !== e.record._text) dirty = true;
    }
    if (dirty) schedule();
  }, { fields: FIELDS + ",tenant" }).catch((err) => showError(describe(err)));
  const ticker = setInterval(() => {
    for (const [code, tr] of shown) {
      const record = records.get(code);
      if (record) tr.querySelector(".seen").textContent = ago(record.last_seen);
    }
  }, 10000);
  return () => {
    alive = false;
    clearInterval(ticker);
    if (frame) clearTimeout(frame);
    state.listeners.delete(onTelemetry);
    devices.unsubscribe("*").catch(() => {});
  };
}
