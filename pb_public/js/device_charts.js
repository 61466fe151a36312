// A device's charts: CPU, memory and fullest disk (percent) and network (KiB/s), over the
// last hour or day. The past comes from the TELEMETRY stream through the bridge
// (cairn.history.telemetry); live documents from the page's NATS subscription extend it.
export const WINDOWS = {
  hour: { label: "Last hour", since: 3600, points: 360 },
  day: { label: "Last day", since: 86400, points: 288 },
};

// One telemetry.system document -> chart values (null where the document lacks one).
export function sample(doc, when) {
  if (!doc || typeof doc !== "object") doc = {};
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const disks = Array.isArray(doc.disks) ? doc.disks : [];
  const used = disks.map((d) => num(d && d.free_percent)).filter((v) => v !== null)
    .map((free) => 100 - free);
  const net = doc.network && typeof doc.network === "object" ? doc.network : {};
  const kib = (v) => (num(v) === null ? null : v / 1024);
  return {
    t: (Date.parse(String(when)) || Date.now()) / 1000,
    cpu: num(doc.cpu_percent), mem: num(doc.memory_used_percent),
    disk: used.length ? Math.max(...used) : null,
    rx: kib(net.rx_bytes_per_sec), tx: kib(net.tx_bytes_per_sec),
  };
}

// series: the y series only (the x series, time, comes first by itself)
function plot(el, series, yRange) {
  const opts = { width: Math.min(900, el.clientWidth || 900), height: 200,
    series: [{}, ...series], scales: { y: yRange ? { range: yRange } : { auto: true } } };
  return { chart: new window.uPlot(opts, [[], ...series.map(() => [])], el) };
}

export function deviceCharts(percentEl, networkEl) {
  const percent = plot(percentEl, [{ label: "CPU %", stroke: "#2f6fdf" },
    { label: "Memory %", stroke: "#c2410c" }, { label: "Fullest disk %", stroke: "#6b21a8" }],
  [0, 100]);
  const network = plot(networkEl, [{ label: "rx KiB/s", stroke: "#047857" },
    { label: "tx KiB/s", stroke: "#b45309" }]);
  let points = [];
  let since = WINDOWS.hour.since;

  function draw() {
    const cut = Date.now() / 1000 - since;
    points = points.filter((p) => p.t >= cut);
    const t = points.map((p) => p.t);
    percent.chart.setData([t, points.map((p) => p.cpu), points.map((p) => p.mem),
      points.map((p) => p.disk)]);
    network.chart.setData([t, points.map((p) => p.rx), points.map((p) => p.tx)]);
    percentEl.dataset.points = String(points.filter((p) => p.cpu !== null).length);
  }

  return {
    // the window's history (answer.messages of cairn.history.telemetry), replacing what was shown
    load(messages, windowSince) {
      since = windowSince;
      const live = points.filter((p) => p.live);
      points = messages.map((m) => sample(m.data, m.time));
      const last = points.length ? points[points.length - 1].t : 0;
      points.push(...live.filter((p) => p.t > last));
      draw();
    },
    // a live document: placed at its arrival (history is placed by the stream's clock
    // too; a device's own clock may be off, or lie)
    add(doc) {
      const p = sample(doc, new Date().toISOString());
      if (p.cpu === null && p.mem === null) return;  // an error document: nothing to draw
      p.live = true;
      if (points.length && p.t <= points[points.length - 1].t) return;  // already shown
      points.push(p);
      draw();
    },
    destroy() { percent.chart.destroy(); network.chart.destroy(); },
  };
}
