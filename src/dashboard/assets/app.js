// The status page: one bounded snapshot stream (server-sent events on
// /api/stream), four views drawn from the latest snapshot only, at most once
// per animation frame, reusing DOM rows. Nothing is fetched from elsewhere.
"use strict";

// ---- token: from ?token= once, then kept for this tab only ----
const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("actord-token", params.get("token"));
  params.delete("token");
  const q = params.toString();
  history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + location.hash);
}
const token = sessionStorage.getItem("actord-token") || "";
const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;

// ---- formatting ----
const $ = (id) => document.getElementById(id);
const fmtInt = (n) => (n ?? 0).toLocaleString("en-US");
const fmtBytes = (b) => { if (!b) return "0 B"; const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; while (b >= 1024 && i < 4) { b /= 1024; i++; } return b.toFixed(i ? 1 : 0) + " " + u[i]; };
const fmtDur = (ms) => { if (ms == null) return "–"; if (ms < 1000) return Math.round(ms) + " ms"; const s = ms / 1000; if (s < 120) return s.toFixed(1) + " s"; const m = s / 60; if (m < 120) return m.toFixed(1) + " min"; return (m / 60).toFixed(1) + " h"; };
const fmtTime = (ms) => ms ? new Date(ms).toLocaleTimeString("en-GB") : "–";
// A function's colour: its hash picks a slot in a palette of distinct
// colours (the next free one on a clash), so a few functions never look alike.
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
  "#65a30d", "#ea580c", "#4f46e5", "#0d9488", "#a16207", "#9333ea", "#be123c", "#475569", "#059669"];
const colours = new Map(), taken = new Set();
function colour(name) {
  let c = colours.get(name);
  if (c) return c;
  let h = 0; for (const ch of String(name ?? "")) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  c = PALETTE[h % PALETTE.length];
  for (let i = 0; i < PALETTE.length && taken.has(c); i++) c = PALETTE[(h + i + 1) % PALETTE.length];
  if (taken.has(c)) c = `hsl(${h % 360} 60% 45%)`;
  if (colours.size < 1000) { colours.set(name, c); taken.add(c); }
  return c;
}
function setText(el, text) { if (el.textContent !== text) el.textContent = text; }
function setClass(el, cls) { if (el.className !== cls) el.className = cls; }
function setData(el, k, v) { if (el.dataset[k] !== v) el.dataset[k] = v; }

// Keeps `body`'s rows in step with `items` (keyed by `key`): rows are made
// once by `make`, filled by `fill(tr, item)` only when their item changed,
// moved only when the order changes, and removed when their item goes.
function syncRows(body, items, key, make, fill) {
  const old = body._rows || new Map(), rows = new Map();
  let at = body.firstChild;
  for (const it of items) {
    let k = String(key(it));
    if (rows.has(k)) { let n = 2; while (rows.has(k + "#" + n)) n++; k += "#" + n; }
    let tr = old.get(k);
    if (!tr) tr = make(k);
    rows.set(k, tr);
    const sig = JSON.stringify(it);
    if (tr._sig !== sig) { fill(tr, it); tr._sig = sig; }
    if (tr !== at) body.insertBefore(tr, at); else at = at.nextSibling;
  }
  for (const [k, tr] of old) if (!rows.has(k)) tr.remove();
  body._rows = rows;
}
// Long tables show a page of rows at a time (the DOM stays small).
const PAGE = { workers: 256, jobs: 100 }, pages = {};
function pageOf(name, items) {
  const el = $(name + "-pager"), size = PAGE[name], n = Math.max(1, Math.ceil(items.length / size));
  const p = Math.min(pages[name] || 0, n - 1);
  pages[name] = p;
  el.hidden = items.length <= size;
  setText(el.children[1], `${fmtInt(p * size + 1)}–${fmtInt(Math.min(items.length, (p + 1) * size))} of ${fmtInt(items.length)}`);
  el.children[0].disabled = p === 0; el.children[2].disabled = p >= n - 1;
  return items.slice(p * size, (p + 1) * size);
}
for (const el of document.querySelectorAll(".pager")) {
  const name = el.id.replace(/-pager$/, "");
  el.children[0].onclick = () => { pages[name] = Math.max(0, (pages[name] || 0) - 1); schedule(); };
  el.children[2].onclick = () => { pages[name] = (pages[name] || 0) + 1; schedule(); };
}
function rowOf(n, k, attr) {
  const tr = document.createElement("tr");
  tr.dataset[attr] = k;
  for (let i = 0; i < n; i++) tr.appendChild(document.createElement("td"));
  return tr;
}

// ---- state ----
let snap = null;          // the latest snapshot: the only thing drawn
let pending = false;      // a render is scheduled for the next frame
let snapshots = 0, renders = 0, lastSnapAt = 0, live = false;
const renderTimes = [];   // the last 600 render durations (ms), for tests and benches
window.actordRenderTimes = renderTimes;
const page = () => (location.hash || "#status").slice(1).split("/")[0] || "status";

// ---- navigation ----
let shownJob = null;      // job id whose detail is open
let shownPage = null;
function showPage() {
  const p = page();
  if (p !== shownPage) { shownPage = p; window.scrollTo(0, 0); }
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + p;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === p);
  const parts = location.hash.slice(1).split("/");
  const job = p === "jobs" && parts[1] ? decodeURIComponent(parts[1]) : null;
  if (job !== shownJob) { shownJob = job; jobLoadedAt = 0; $("jd-msg").textContent = ""; }
  $("job-detail").hidden = !shownJob;
  if (shownJob) loadJob();
  schedule();
}
window.addEventListener("hashchange", showPage);

// ---- live updates: EventSource retries by itself; when it gives up
// (the server answered with an error while restarting), start a new one ----
let es = null, retryMs = 500;
function connect() {
  es = new EventSource(withToken("/api/stream"));
  es.addEventListener("snapshot", (e) => {
    let s; try { s = JSON.parse(e.data); } catch { return; }
    snap = s; snapshots++; lastSnapAt = Date.now(); retryMs = 500;
    setConn(true); schedule();
  });
  es.onopen = () => setConn(true);
  es.onerror = () => {
    setConn(false);
    if (es.readyState === EventSource.CLOSED) {
      es.close();
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 5000);
    }
  };
}
function setConn(up) {
  live = up;
  const stale = up && snapshots > 0 && Date.now() - lastSnapAt > 5000;
  const c = $("conn");
  setClass(c, "conn " + (!up ? "down" : stale ? "stale" : "up"));
  setText(c, !up ? (snapshots ? "reconnecting…" : "connecting…") : stale ? "no updates" : "live");
  document.body.dataset.live = up && !stale ? "1" : "0";
}
setInterval(() => setConn(live), 1000);

// ---- rendering: at most once per frame, from the latest snapshot ----
function schedule() {
  if (pending || !snap) return;
  pending = true;
  requestAnimationFrame(render);
}
function render() {
  pending = false;
  const t0 = performance.now();
  const p = page();
  renderHeader();
  if (p === "status") { renderCards(); renderStream(); renderProgress(); renderRate(); renderRecent(); }
  if (p === "workers") renderWorkers();
  if (p === "jobs") renderJobs();
  if (p === "system") renderSystem();
  void document.body.offsetHeight;   // count the layout too
  const ms = performance.now() - t0;
  renderTimes.push(ms); if (renderTimes.length > 600) renderTimes.shift();
  const d = document.body.dataset;
  d.renderMs = ms.toFixed(2);
  d.renderMaxMs = Math.max(+(d.renderMaxMs || 0), ms).toFixed(2);
  d.renders = String(++renders);
  d.snapshots = String(snapshots);
  if (performance.memory) d.heapBytes = String(performance.memory.usedJSHeapSize);
}

// On every view: the epoch, and the figures tests read from body[data-*].
let up = 0, lost = 0;
function renderHeader() {
  const s = snap.system || {}, t = snap.totals || {}, ws = snap.workers || [];
  up = 0; for (const w of ws) if (!w.lost) up++;
  lost = ws.length - up;
  const b = document.body;
  setData(b, "epoch", String(s.epoch ?? "")); setData(b, "workers", String(up));
  setData(b, "lost", String(lost)); setData(b, "finished", String(t.finished ?? 0));
  setText($("epoch"), s.epoch == null ? "" : "epoch " + s.epoch);
}

function renderCards() {
  const t = snap.totals || {};
  setText($("n-workers"), fmtInt(up));
  setText($("n-lost"), lost ? fmtInt(lost) + " lost" : "");
  setText($("n-slots"), fmtInt(t.slots));
  setText($("n-running"), fmtInt(t.running));
  setText($("n-rate"), fmtInt(Math.round(t.rate || 0)));
  setText($("n-finished"), fmtInt(t.finished));
  setText($("n-failed"), fmtInt(t.failed));
}

// The task stream: lanes are worker slots; a bar is one task, or a batch of
// tiny tasks that finished close together in that slot. At most the
// snapshot's bars (bounded by the server) are drawn.
function renderStream() {
  const c = $("stream"), st = snap.stream || { lanes: [], bars: [], window_ms: 60000, now_ms: Date.now() };
  const lanes = st.lanes || [], bars = st.bars || [];
  const laneH = Math.max(3, Math.min(14, Math.floor(600 / Math.max(1, lanes.length))));
  const h = Math.max(60, lanes.length * laneH + 20), w = c.clientWidth || 800, dpr = devicePixelRatio || 1;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); c.style.height = h + "px";
  }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const span = Math.max(1, st.window_ms || 60000), t0 = st.now_ms - span, label = laneH >= 9 ? 64 : 4, plot = w - label - 4;
  setText($("stream-window"), String(Math.round(span / 1000)));
  g.fillStyle = "#f3f4f6";
  for (let i = 1; i < lanes.length; i += 2) g.fillRect(label, 10 + i * laneH, plot, laneH);
  g.font = "10px system-ui, sans-serif"; g.fillStyle = "#6b7280";
  if (laneH >= 9) lanes.forEach((l, i) => g.fillText(String(l).slice(0, 10), 2, 10 + i * laneH + laneH - 2));
  const index = new Map(lanes.map((l, i) => [l, i]));
  const seen = new Map();
  let drawn = 0, tasks = 0, lastEnd = 0;
  for (const b of bars) {
    const i = index.get(b.lane); if (i === undefined) continue;
    const x0 = label + Math.max(0, (b.start_ms - t0) / span) * plot;
    const x1 = label + Math.min(1, (b.end_ms - t0) / span) * plot;
    if (x1 < label) continue;
    const col = colour(b.func); seen.set(b.func, col);
    g.fillStyle = col;
    g.fillRect(x0, 10 + i * laneH, Math.max(1, x1 - x0), Math.max(1, laneH - 1));
    drawn++; tasks += b.n || 1; if (b.end_ms > lastEnd) lastEnd = b.end_ms;
  }
  setData(c, "bars", String(drawn)); setData(c, "lanes", String(lanes.length));
  setData(c, "tasks", String(tasks)); setData(c, "lastEnd", String(lastEnd));
  const key = [...seen.keys()].sort().join("\u0000");
  const legend = $("stream-legend");
  if (legend._key !== key) {
    legend._key = key;
    legend.replaceChildren(...[...seen].sort().map(([f, col]) => {
      const s = document.createElement("span"), i = document.createElement("i");
      i.style.background = col; s.append(i, String(f)); return s;
    }));
  }
}

const STATES = ["finished", "running", "queued", "ready", "waiting", "failed", "canceled"];
function makeBar() {
  const bar = document.createElement("div"); bar.className = "bar";
  for (const s of STATES) { const d = document.createElement("div"); d.className = "s-" + s; bar.appendChild(d); }
  return bar;
}
function fillBar(bar, j) {
  const total = Math.max(1, j.total || 0);
  STATES.forEach((s, i) => {
    const d = bar.children[i], n = j[s] || 0;
    const w = (100 * n / total).toFixed(2) + "%";
    if (d.style.width !== w) d.style.width = w;
    const title = s + ": " + fmtInt(n);
    if (d.title !== title) d.title = title;
  });
}
// Live jobs, and those that finished in the last ten minutes (at most 20).
function renderProgress() {
  const now = Date.now();
  const jobs = (snap.jobs || []).filter((j) => !j.done || now - (j.finished_at_ms || 0) < 600000).slice(-20);
  $("no-jobs").hidden = jobs.length > 0;
  syncRows($("progress"), jobs, (j) => j.id, (k) => {
    const row = document.createElement("div"); row.className = "job-row"; row.dataset.job = k;
    const name = document.createElement("a"); name.href = "#jobs/" + encodeURIComponent(k);
    const count = document.createElement("span");
    row.append(name, makeBar(), count); return row;
  }, (row, j) => {
    setText(row.children[0], (j.name || "") + " " + String(j.id).slice(0, 8));
    fillBar(row.children[1], j);
    setText(row.children[2], fmtInt(j.finished) + " / " + fmtInt(j.total) + (j.failed ? " · " + fmtInt(j.failed) + " failed" : ""));
    setData(row, "finished", String(j.finished || 0)); setData(row, "total", String(j.total || 0));
    setClass(row, j.failed ? "job-row has-failed" : "job-row");
  });
}

function renderRate() {
  const pts = snap.throughput || [], line = $("rate-line");
  if (pts.length < 2) { line.setAttribute("points", ""); setText($("rate-max"), ""); setText($("rate-span"), ""); return; }
  const tMin = pts[0][0], tMax = pts[pts.length - 1][0];
  let vMax = 1; for (const p of pts) if (p[1] > vMax) vMax = p[1];
  let xy = "";
  for (const [t, v] of pts) xy += `${(((t - tMin) / Math.max(1, tMax - tMin)) * 600).toFixed(1)},${(115 - (v / vMax) * 105).toFixed(1)} `;
  line.setAttribute("points", xy);
  $("rate").dataset.points = String(pts.length);
  setText($("rate-max"), "peak " + fmtInt(Math.round(vMax)) + "/s");
  setText($("rate-span"), "last " + fmtDur(tMax - tMin));
}

function renderRecent() {
  const ev = (snap.events || []).slice(-8).reverse();
  syncRows($("recent"), ev, (e) => e.at_ms + "/" + e.kind + "/" + e.text, (k) => {
    const li = document.createElement("li"); li.append(document.createElement("time"), document.createElement("b"), document.createElement("span"));
    return li;
  }, (li, e) => {
    setData(li, "kind", String(e.kind));
    setText(li.children[0], fmtTime(e.at_ms)); setText(li.children[1], String(e.kind).replace(/[-_]/g, " ")); setText(li.children[2], e.text || "");
  });
}

function workerState(w) { return w.lost ? "lost" : w.draining ? "draining" : "up"; }
function renderWorkers() {
  syncRows($("workers").tBodies[0], pageOf("workers", snap.workers || []), (w) => w.id, (k) => rowOf(12, k, "worker"), (tr, w) => {
    const c = tr.children, state = workerState(w);
    setText(c[0], String(w.id)); setText(c[1], w.host || ""); setText(c[2], String(w.pid ?? ""));
    setText(c[3], w.nanny ? String(w.nanny) : "–"); setText(c[4], String(w.slots ?? 0));
    setText(c[5], String(w.running ?? 0)); setText(c[6], String(w.queued ?? 0));
    setText(c[7], w.cpu_pct == null ? "–" : w.cpu_pct.toFixed(0) + " %");
    setText(c[8], w.rss_kib == null ? "–" : fmtBytes(w.rss_kib * 1024));
    setText(c[9], String(w.restarts ?? 0));
    setText(c[10], w.last_heard_ms == null ? "–" : fmtDur(w.last_heard_ms) + " ago");
    setText(c[11], state);
    setClass(tr, state === "up" ? "" : state);
    setData(tr, "state", state); setData(tr, "pid", String(w.pid ?? "")); setData(tr, "restarts", String(w.restarts ?? 0));
  });
}

function renderJobs() {
  const jobs = (snap.jobs || []).slice(-500).reverse();
  const body = $("jobs").tBodies[0];
  syncRows(body, pageOf("jobs", jobs), (j) => j.id, (k) => {
    const tr = rowOf(8, k, "job"); tr.className = "clickable";
    tr.children[3].appendChild(makeBar());
    tr.onclick = () => { location.hash = "#jobs/" + encodeURIComponent(k); };
    return tr;
  }, (tr, j) => {
    const c = tr.children;
    setText(c[0], String(j.id)); setText(c[1], j.name || ""); setText(c[2], fmtInt(j.total));
    fillBar(c[3].firstChild, j); setText(c[4], fmtInt(j.failed));
    setText(c[5], j.done ? (j.failed ? "done, failures" : "done") : "running");
    setText(c[6], fmtTime(j.submitted_at_ms));
    setText(c[7], j.done && j.finished_at_ms ? fmtDur(j.finished_at_ms - j.submitted_at_ms) : "–");
    setData(tr, "done", j.done ? "1" : "0");
  });
  // The open job's detail follows its counts (refetched at most once a second).
  if (shownJob) {
    const j = jobs.find((x) => String(x.id) === shownJob);
    const sig = j ? [j.finished, j.failed, j.canceled, j.done].join("/") : "";
    if (sig !== jobSig && Date.now() - jobLoadedAt > 1000) loadJob();
  }
}

let jobLoadedAt = 0, jobSig = "", jobLoading = false;
async function loadJob() {
  if (!shownJob || jobLoading) return;
  const id = shownJob;
  jobLoading = true; jobLoadedAt = Date.now();
  try {
    const r = await fetch(withToken("/api/jobs/" + encodeURIComponent(id)));
    if (id !== shownJob) return;
    if (!r.ok) { setText($("jd-msg"), "job " + id + ": " + (await r.text()).slice(0, 300)); return; }
    const j = await r.json();
    jobSig = [j.finished, j.failed, j.canceled, j.done].join("/");
    setText($("jd-id"), String(j.id)); setText($("jd-name"), j.name || "");
    const sum = $("jd-summary");
    if (!sum.firstChild) { sum.append(makeBar(), document.createElement("p")); }
    fillBar(sum.firstChild, j);
    setText(sum.lastChild, `${fmtInt(j.finished)} of ${fmtInt(j.total)} finished, ${fmtInt(j.running)} running, ${fmtInt(j.queued)} queued, ` +
      `${fmtInt(j.failed)} failed, ${fmtInt(j.canceled)} canceled` + (j.done ? " · done" : ""));
    const failed = j.failed_tasks || [];
    syncRows($("jd-failed").tBodies[0], failed, (t) => t.task, (k) => rowOf(4, k, "task"), (tr, t) => {
      const c = tr.children;
      setText(c[0], String(t.task)); setText(c[1], t.key == null ? "" : String(t.key));
      setText(c[2], String(t.attempts ?? "")); setText(c[3], t.error || ""); c[3].className = "err";
    });
    $("jd-failed").hidden = failed.length === 0;
    $("jd-retry").disabled = !j.failed; $("jd-cancel").disabled = !!j.done;
    $("job-detail").dataset.job = String(j.id);
  } catch (e) {
    setText($("jd-msg"), "cannot load job " + id + ": " + e.message);
  } finally {
    jobLoading = false;
  }
}

// Admin actions need the cluster token (the link `actord ctl dashboard` prints).
async function admin(action) {
  if (!shownJob) return;
  const msg = $("jd-msg");
  if (!token) { setText(msg, "needs the cluster token: open the link `actord ctl dashboard` prints"); return; }
  if (action === "cancel" && !confirm("Cancel job " + shownJob + "?")) return;
  setText(msg, action + "…");
  try {
    const r = await fetch("/api/jobs/" + encodeURIComponent(shownJob) + "/" + action, { method: "POST", headers: { Authorization: "Bearer " + token } });
    let text;
    if (r.ok) { try { text = (await r.json()).message; } catch { text = "done"; } }
    else if (r.status === 401 || r.status === 403) text = "refused: the token is not this cluster's (open the link `actord ctl dashboard` prints)";
    else text = (await r.text()).slice(0, 300);
    setText(msg, text || "done");
  } catch (e) {
    setText(msg, action + " failed: " + e.message);
  }
  jobLoadedAt = 0; loadJob();
}
$("jd-retry").onclick = () => admin("retry");
$("jd-cancel").onclick = () => admin("cancel");

function renderSystem() {
  const s = snap.system || {};
  const items = [["epoch", String(s.epoch ?? "–")], ["uptime", fmtDur(s.uptime_ms)], ["started", fmtTime(s.started_at_ms)],
    ["address", s.address || "–"], ["security", s.security === "insecure" ? "insecure: no TLS, no authentication" : (s.security || "–")],
    ["journal", s.journal_path || "none (results in memory only)"], ["journal size", fmtBytes(s.journal_bytes)],
    ["last flush", s.last_flush_ms == null ? "–" : fmtDur(s.last_flush_ms) + " ago"],
    ["flush latency", s.flush_latency_us == null ? "–" : (s.flush_latency_us / 1000).toFixed(2) + " ms"],
    ["connections", fmtInt(s.connections)], ["version", s.version || "–"]];
  const dl = $("system");
  if (dl.children.length !== items.length * 2) {
    dl.replaceChildren(...items.flatMap(([k]) => { const dt = document.createElement("dt"); dt.textContent = k; return [dt, document.createElement("dd")]; }));
  }
  items.forEach(([, v], i) => setText(dl.children[2 * i + 1], v));
  dl.children[9].className = s.security === "insecure" ? "warn" : "";
  const ev = (snap.events || []).slice().reverse();
  syncRows($("events").tBodies[0], ev, (e) => e.at_ms + "/" + e.kind + "/" + e.text, (k) => rowOf(3, k, "key"), (tr, e) => {
    setData(tr, "kind", String(e.kind));
    setText(tr.children[0], fmtTime(e.at_ms)); setText(tr.children[1], String(e.kind).replace(/[-_]/g, " ")); setText(tr.children[2], e.text || "");
  });
}

showPage();
connect();
