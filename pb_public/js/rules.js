// Rules: the tenant's rules with their status, and an editor. The rule router validates a
// saved rule and writes `status` / `error` (with a line number) back to the row within a
// second; the editor shows that answer under the text as soon as it arrives.
import { canCommand, describe, esc, showError } from "/js/ui.js";

function status(row) {
  if (!row.enabled) return "disabled";
  return row.status || "not validated yet";
}

export function renderRules(state, main) {
  const { pb } = state;
  const rules = pb.collection("rules");
  const tenant = state.membership.tenant;
  const editable = canCommand(state);
  let alive = true;
  let editing = null; // row id, "" for a new rule
  main.innerHTML = `<div class="card"><h2>Rules</h2>
      <table id="rules"><thead><tr><th>name</th><th>status</th><th>error</th></tr></thead>
      <tbody></tbody></table>
      ${editable ? '<p><button id="new-rule" type="button">New rule</button></p>' : ""}</div>
    <div class="card" id="editor" hidden><h3 id="editor-title"></h3>
      <form id="rule-form"><p><label>Name <input name="name" required></label>
        <label><input name="enabled" type="checkbox"> enabled</label></p>
        <textarea name="yaml" rows="14" cols="90" spellcheck="false" aria-label="rule"></textarea>
        <p><button type="submit">Save</button> <span id="rule-status"></span></p>
        <pre id="rule-error" hidden></pre></form></div>`;
  const body = main.querySelector("#rules tbody");
  const form = main.querySelector("#rule-form");
  const rows = new Map();

  // a copy older than the one held never replaces it; true when it was kept
  function keep(row) {
    const held = rows.get(row.id);
    if (held && held.updated > row.updated) return false;
    rows.set(row.id, row);
    return true;
  }

  function drawList() {
    body.innerHTML = [...rows.values()].sort((a, b) => a.name.localeCompare(b.name))
      .map((r) => `<tr data-id="${esc(r.id)}"><td><a href="#/rules" data-edit="${esc(r.id)}">
        ${esc(r.name)}</a></td><td class="status">${esc(status(r))}</td>
        <td>${esc(r.error)}</td></tr>`).join("") ||
      '<tr><td colspan="3" class="muted">no rules yet</td></tr>';
    for (const link of body.querySelectorAll("[data-edit]")) {
      link.addEventListener("click", (ev) => { ev.preventDefault(); open(link.dataset.edit); });
    }
  }

  function showVerdict(row) {
    main.querySelector("#rule-status").textContent = status(row);
    main.querySelector("#rule-status").dataset.status = row.status || "";
    const error = main.querySelector("#rule-error");
    error.hidden = !row.error;
    error.textContent = row.error || "";
  }

  function open(id) {
    editing = id;
    const row = rows.get(id) || { name: "", enabled: true, yaml: "", status: "", error: "" };
    main.querySelector("#editor").hidden = false;
    main.querySelector("#editor-title").textContent = id ? `Rule ${row.name}` : "New rule";
    form.elements.name.value = row.name;
    form.elements.enabled.checked = !!row.enabled;
    form.elements.yaml.value = row.yaml || "";
    for (const el of form.elements) el.disabled = !editable;
    showVerdict(row);
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = { name: form.elements.name.value, enabled: form.elements.enabled.checked,
      yaml: form.elements.yaml.value };
    main.querySelector("#rule-status").textContent = "saving…";
    try {
      const row = editing ? await rules.update(editing, data)
        : await rules.create({ ...data, tenant });
      editing = row.id;
      main.querySelector("#editor-title").textContent = `Rule ${row.name}`;
      // the router may have answered before our own save's reply came back
      const fresh = await rules.getOne(row.id, { requestKey: null });
      keep(fresh);
      drawList();
      if (fresh.updated !== row.updated) showVerdict(fresh);
      else main.querySelector("#rule-status").textContent = "saved: waiting for the router…";
    } catch (err) {
      main.querySelector("#rule-status").textContent = `not saved: ${describe(err)}`;
    }
  });
  const newButton = main.querySelector("#new-rule");
  if (newButton) newButton.addEventListener("click", () => open(""));

  rules.getFullList({ filter: pb.filter("tenant = {:t}", { t: tenant }), requestKey: null })
    .then((list) => { if (alive) { for (const r of list) rows.set(r.id, r); drawList(); } })
    .catch((err) => showError(`Rules could not be loaded: ${describe(err)}`));
  rules.subscribe("*", (e) => {
    if (!alive || e.record.tenant !== tenant) return;
    if (e.action === "delete") rows.delete(e.record.id);
    else if (!keep(e.record)) return;
    drawList();
    if (e.record.id === editing && e.action !== "delete") showVerdict(e.record);
  }).catch((err) => showError(describe(err)));
  return () => { alive = false; rules.unsubscribe("*").catch(() => {}); };
}
