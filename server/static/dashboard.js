// The /socket-dashboard page: shows the seed's figures and draws the last minutes as plain SVG.
// Live: the server pushes the /socket-metrics snapshot over Socket.IO (namespace /admin, official
// socket.io-client) every data-interval-ms (SOCKET_METRICS_INTERVAL, the seed's 5 s by default);
// with batching on the pushes arrive in `batch` frames that SocketBatch.unwrapBatches (client/js/
// batch.js) turns back into `metrics` events. While the socket is not connected (refused, down,
// not yet up after FALLBACK_MS) the page polls /socket-metrics at the same interval instead.
// body data-transport says which fed the last update ("socket" or "polling").
"use strict";

(function () {
  const WINDOW_MS = 5 * 60 * 1000; // what the charts keep
  const SVG = "http://www.w3.org/2000/svg";
  const body = document.body;
  const interval = Math.max(100, Number(body.dataset.intervalMs) || 5000);
  const history = []; // {t, connections, memory, p95, eps}
  const charts = {
    connections: { floor: 5, digits: 0 },
    memory: { floor: 10, digits: 1 },
    p95: { floor: 1, digits: 2 },
    eps: { floor: 5, digits: 1 },
  };
  const $ = (id) => document.getElementById(id);

  $("interval").textContent = interval % 1000 === 0 ? `${interval / 1000} s` : `${interval} ms`;
  $("window").textContent = `${WINDOW_MS / 60000} minutes`;

  function show(id, value, digits) {
    const el = $(id);
    el.dataset.value = String(value);
    el.textContent = Number(value).toLocaleString("en-US", {
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    });
  }

  function niceCeil(x) {
    const p = Math.pow(10, Math.floor(Math.log10(x)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= x) return m * p;
    return 10 * p;
  }

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function draw(key) {
    const svg = $(`chart-${key}`);
    const spec = charts[key];
    const now = history.length ? history[history.length - 1].t : Date.now();
    const pts = history.map((h) => [h.t, h[key]]);
    // the x axis spans what the page has seen: at least a minute, at most WINDOW_MS
    const span = Math.min(WINDOW_MS, Math.max(60000, pts.length ? now - pts[0][0] : 0));
    const top = niceCeil(Math.max(spec.floor, ...pts.map((p) => p[1] * 1.1)));
    const x0 = 44, x1 = 548, y0 = 10, y1 = 124;
    const sx = (t) => x1 - ((now - t) / span) * (x1 - x0);
    const sy = (v) => y1 - (v / top) * (y1 - y0);
    svg.replaceChildren();
    for (const f of [0, 0.5, 1]) {
      const y = sy(top * f);
      svg.append(el("line", { class: "grid", x1: x0, x2: x1, y1: y, y2: y }));
      const label = (top * f).toLocaleString("en-US", { maximumFractionDigits: spec.digits || 0 });
      svg.append(el("text", { x: x0 - 6, y: y + 4, "text-anchor": "end" }, label));
    }
    const ago = span >= 120000 ? `${Math.round(span / 60000)} min` : `${Math.round(span / 1000)} s`;
    svg.append(el("text", { x: x0, y: 142 }, `−${ago}`));
    svg.append(el("text", { x: x1, y: 142, "text-anchor": "end" }, "now"));
    if (pts.length) {
      const coords = pts.map(([t, v]) => `${sx(t).toFixed(1)},${sy(v).toFixed(1)}`);
      const first = sx(pts[0][0]).toFixed(1), last = sx(pts[pts.length - 1][0]).toFixed(1);
      svg.append(el("polygon", { class: "area", points: `${first},${y1} ${coords.join(" ")} ${last},${y1}` }));
      svg.append(el("polyline", { class: "line", points: coords.join(" ") }));
      const [lt, lv] = pts[pts.length - 1];
      svg.append(el("circle", { class: "dot", cx: sx(lt).toFixed(1), cy: sy(lv).toFixed(1), r: 3 }));
    }
    svg.dataset.points = String(pts.length);
    svg.dataset.last = pts.length ? String(pts[pts.length - 1][1]) : "";
  }

  function render(m, via) {
    const lat = m.performance.latency;
    const eps = m.performance.throughput.eventsPerSecond;
    const conns = m.connections.total;
    const status = m.memory.status;
    show("connections", conns, 0);
    show("memory", m.memory.usage, 1);
    show("p95", lat.p95, 2);
    show("eps", eps, 1);
    const companies = Object.keys(m.connections.byCompany || {}).length;
    $("companies").textContent = `${companies} ${companies === 1 ? "company" : "companies"} · ${m.memory.rooms} rooms`;
    $("memory-sub").textContent = `${(m.memory.rss / 1e6).toFixed(0)} of ${(m.memory.threshold / 1e6).toFixed(0)} MB · ${m.memory.trend}`;
    $("latency-sub").textContent = `p50 ${lat.p50} ms · p99 ${lat.p99} ms`;
    $("eps-sub").textContent = `${Number(m.counters.events_in).toLocaleString("en-US")} received in all`;
    const badge = $("status");
    badge.textContent = status;
    badge.dataset.value = status;
    badge.className = `badge ${status}`;
    const t = Date.now();
    history.push({ t, connections: conns, memory: m.memory.usage, p95: lat.p95, eps });
    while (history.length && history[0].t < t - WINDOW_MS) history.shift();
    for (const key of Object.keys(charts)) draw(key);
    $("updated").textContent = new Date(m.node.time * 1000).toLocaleTimeString("en-GB");
    body.dataset.transport = via;
    window.caplabDashboard = { last: m }; // what the page shows, for scripts and tests
    const counter = via === "socket" ? "socketUpdates" : "pollUpdates";
    body.dataset[counter] = String(Number(body.dataset[counter]) + 1);
    body.dataset.refreshes = String(Number(body.dataset.refreshes) + 1);
  }

  function setTransport(text, detail) {
    $("transport").textContent = text;
    $("transport").title = detail || "";
  }

  // -- polling: only while the socket is not connected ----------------------------------------
  let polling = false;
  let pollTimer = null;

  async function refresh() {
    pollTimer = null;
    try {
      const resp = await fetch("/socket-metrics", { cache: "no-store", credentials: "same-origin" });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      const m = await resp.json();
      if (polling) render(m, "polling");
      $("error").textContent = "";
    } catch (err) {
      $("error").textContent = `last refresh failed: ${err.message}`;
    } finally {
      if (polling && pollTimer === null) pollTimer = setTimeout(refresh, interval);
    }
  }

  function startPolling(why, detail) {
    setTransport(`polling (${why})`, detail);
    if (polling) return;
    polling = true;
    refresh();
  }

  function stopPolling() {
    polling = false;
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
  }

  // -- live: Socket.IO namespace /admin -------------------------------------------------------
  const FALLBACK_MS = 3000; // no socket by then: poll meanwhile (it stops once the socket connects)

  function live() {
    if (typeof io !== "function" || typeof SocketBatch !== "object") {
      startPolling("no Socket.IO client");
      return;
    }
    // the handshake carries the login session (an HttpOnly cookie for /socket.io): no token here
    const socket = io("/admin", { reconnectionDelayMax: Math.max(1000, interval) });
    SocketBatch.unwrapBatches(socket, {
      onError: (err) => {
        $("error").textContent = `batch: ${err.message}`;
      },
    });
    socket.on("batch", () => {
      body.dataset.batches = String(Number(body.dataset.batches) + 1);
    });
    socket.on("metrics", (m) => {
      render(m, "socket");
      $("error").textContent = "";
    });
    socket.on("connect", () => {
      stopPolling();
      setTransport("live");
      socket.emit("refresh"); // the first snapshot now, not at the next interval
    });
    socket.on("connect_error", (err) => {
      // refused by the server (socket.active false): it will not retry, poll for good
      if (socket.active) startPolling("socket reconnecting", err.message);
      else startPolling("socket refused", err.message);
    });
    socket.on("disconnect", () => startPolling("socket down"));
    setTimeout(() => {
      if (!socket.connected) startPolling("socket not connected");
    }, FALLBACK_MS);
  }

  for (const key of Object.keys(charts)) draw(key);
  live();
})();
