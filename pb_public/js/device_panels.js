// A device's health (the latest `health` command's answer) and inventory (its latest
// telemetry.inventory document) as tables a person reads, not JSON.
import { ago, esc } from "/js/ui.js";

function rows(pairs) {
  return `<table class="kv">${pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("")}</table>`;
}

function duration(seconds) {
  if (typeof seconds !== "number") return null;
  const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : `${m} min`;
}

const obj = (v) => (v && typeof v === "object" ? v : {});

export function healthPanel(doc, when) {
  if (!doc) return '<p class="muted">No health check yet.</p>';
  const agent = obj(doc.agent), nats = obj(doc.nats), tasks = obj(doc.tasks);
  const commands = obj(doc.commands), os = obj(doc.os);
  const status = String(doc.status || "unknown");
  return `<p><span class="health ${esc(status)}">${esc(status)}</span>
    <span class="muted">checked ${esc(ago(when))}</span></p>${rows([
    ["agent", [agent.version, agent.uptime_seconds !== undefined
      ? `up ${duration(agent.uptime_seconds)}` : null,
    agent.memory_mb !== undefined ? `${agent.memory_mb} MB` : null,
    agent.threads !== undefined ? `${agent.threads} threads` : null].filter(Boolean).join(" · ")],
    ["NATS", [nats.connected ? "connected" : "disconnected", nats.url,
      nats.reconnects !== undefined ? `${nats.reconnects} reconnects` : null]
      .filter(Boolean).join(" · ")],
    ["heartbeats", tasks.heartbeat_count !== undefined
      ? `${tasks.heartbeat_count}, last ${ago(tasks.last_heartbeat)}` : null],
    ["metrics", tasks.metrics_count !== undefined ? `${tasks.metrics_count} sent, ` +
      `${tasks.metrics_failures || 0} failed, last ${ago(tasks.last_metrics)}` : null],
    ["commands", commands.processed !== undefined
      ? `${commands.processed} processed, ${commands.errored || 0} errored` : null],
    ["OS", [os.name, os.version, os.platform].filter(Boolean).join(" ")],
  ])}`;
}

export function inventoryPanel(doc, when) {
  if (!doc) return '<p class="muted">No inventory yet (the agent sends one at start).</p>';
  const os = obj(doc.os), cpu = obj(doc.cpu);
  const disks = Array.isArray(doc.disks) ? doc.disks : [];
  const nics = Array.isArray(doc.network_interfaces) ? doc.network_interfaces : [];
  const addresses = (n) => (Array.isArray(n.addresses) ? n.addresses : [])
    .map((a) => (a && typeof a === "object" ? a.address || "" : a)).filter(Boolean).join(", ");
  return `<p class="muted">as of ${esc(ago(when))}</p>${rows([
    ["hostname", doc.fqdn && doc.fqdn !== doc.hostname ? `${doc.hostname} (${doc.fqdn})`
      : doc.hostname],
    ["OS", [os.name, os.version, os.kernel ? `kernel ${os.kernel}` : null].filter(Boolean)
      .join(" · ")],
    ["hardware", [doc.architecture, cpu.count ? `${cpu.count} CPUs` : null, cpu.model,
      doc.memory_total_gb ? `${doc.memory_total_gb} GB memory` : null].filter(Boolean)
      .join(" · ")],
    ["booted", doc.boot_time ? ago(String(doc.boot_time)) : null],
    ["agent", [doc.agent_version, doc.python_version ? `Python ${doc.python_version}` : null]
      .filter(Boolean).join(" · ")],
    ...disks.slice(0, 12).map((d) => [`disk ${obj(d).mount || "?"}`,
      `${obj(d).total_gb ?? "?"} GB, ${obj(d).free_gb ?? "?"} GB free`]),
    ...nics.slice(0, 12).map((n) => [`interface ${obj(n).name || "?"}`,
      addresses(obj(n)) || obj(n).mac || ""]),
  ])}`;
}

// What the agent will run (inventory.allowed), or null for an agent that does not say.
export function allowedOf(doc) {
  const allowed = doc && obj(doc.allowed);
  if (!allowed || !Object.keys(allowed).length) return null;
  const list = (v) => (Array.isArray(v) ? v.filter((x) => typeof x === "string") : []);
  return { commands: [...list(allowed.commands), ...list(allowed.scripts)],
    services: list(allowed.services) };
}
