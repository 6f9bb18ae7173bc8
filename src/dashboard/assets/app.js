// The status page: one snapshot stream (server-sent events), four views.
// Everything drawn comes from /api/stream (or /api/snapshot); nothing is
// fetched from elsewhere.
"use strict";

const params = new URLSearchParams(location.search);
if (params.get("token")) sessionStorage.setItem("actord-token", params.get("token"));
const token = sessionStorage.getItem("actord-token") || "";
const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;

let snap = null;          // the latest snapshot
let shownJob = null;      // job id whose detail is open
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmtInt = (n) => (n ?? 0).toLocaleString("en-US");
const fmtBytes = (b) => { if (!b) return "0 B"; const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; while (b >= 1024 && i < 4) { b /= 1024; i++; } return b.toFixed(i ? 1 : 0) + " " + u[i]; };
const fmtDur = (ms) => { if (ms == null) return "–"; if (ms < 1000) return ms + " ms"; const s = ms / 1000; if (s < 120) return s.toFixed(1) + " s"; const m = s / 60; if (m < 120) return m.toFixed(1) + " min"; return (m / 60).toFixed(1) + " h"; };
const fmtTime = (ms) => ms ? new Date(ms).toLocaleTimeString("en-GB") : "–";
function colour(name) { let h = 0; for (const c of name || "") h = (h * 31 + c.charCodeAt(0)) >>> 0; return `hsl(${h % 360} 65% 50%)`; }

// ---- navigation ----
function showPage() {
  const page = (location.hash || "#status").slice(1).split("/")[0];
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  const parts = location.hash.slice(1).split("/");
  shownJob = page === "jobs" && parts[1] ? decodeURIComponent(parts[1]) : null;
  if (shownJob) loadJob(shownJob);
  $("job-detail").hidden = !shownJob;
  if (snap) render();
}
window.addEventListener("hashchange", showPage);

// ---- live updates ----
function connect() {
  const es = new EventSource(withToken("/api/stream"));
  es.addEventListener("snapshot", (e) => { snap = JSON.parse(e.data); setConn(true); render(); });
  es.onopen = () => setConn(true);
  es.onerror = () => setConn(false);   // EventSource reconnects by itself
}
function setConn(up) {
  const c = $("conn");
  c.className = "conn " + (up ? "up" : "down");
  c.textContent = up ? "live" : "reconnecting…";
  document.body.dataset.live = up ? "1" : "0";
}

function render() {
  const page = (location.hash || "#status").slice(1).split("/")[0];
  renderCards();
  if (page === "status") { renderStream(); renderProgress(); renderRate(); }
  if (page === "workers") renderWorkers();
  if (page === "jobs") renderJobs();
  if (page === "system") renderSystem();
}

function renderCards() {
  const t = snap.totals;
  $("n-workers").textContent = fmtInt(snap.workers.filter((w) => !w.lost).length);
  $("n-slots").textContent = fmtInt(t.slots);
  $("n-running").textContent = fmtInt(t.running);
  $("n-rate").textContent = fmtInt(Math.round(t.rate));
  $("n-finished").textContent = fmtInt(t.finished);
  $("n-failed").textContent = fmtInt(t.failed);
}

// The task stream: lanes are worker slots; a bar is one task, or a batch of
// tiny tasks that finished close together on that worker.
function renderStream() {
  const c = $("stream"), st = snap.stream;
  const lanes = st.lanes, laneH = Math.max(3, Math.min(14, Math.floor(600 / Math.max(1, lanes.length))));
  const h = Math.max(60, lanes.length * laneH + 20);
  const w = c.clientWidth || 800;
  if (c.width !== w * devicePixelRatio || c.height !== h * devicePixelRatio) {
    c.width = w * devicePixelRatio; c.height = h * devicePixelRatio; c.style.height = h + "px";
  }
  const g = c.getContext("2d");
  g.setTransform(devicePixelRatio, 0, 0, devicePixelRatio, 0, 0);
  g.clearRect(0, 0, w, h);
  const span = st.window_ms, t0 = st.now_ms - span, label = 60, plot = w - label - 4;
  $("stream-window").textContent = Math.round(span / 1000);
  g.font = "10px system-ui"; g.fillStyle = "#6b7280";
  const index = new Map(lanes.map((l, i) => [l, i]));
  if (laneH >= 9) lanes.forEach((l, i) => g.fillText(l, 2, 10 + i * laneH + laneH - 3));
  const seen = new Map();
  for (const b of st.bars) {
    const i = index.get(b.lane); if (i === undefined) continue;
    const x0 = label + Math.max(0, (b.start_ms - t0) / span) * plot;
    const x1 = label + Math.min(1, (b.end_ms - t0) / span) * plot;
    g.fillStyle = colour(b.func); seen.set(b.func, g.fillStyle);
    g.fillRect(x0, 10 + i * laneH, Math.max(1, x1 - x0), laneH - 1);
  }
  c.dataset.bars = String(st.bars.length);
  $("stream-legend").innerHTML = [...seen].map(([f, col]) => `<span><i style="background:${col}"></i>${esc(f)}</span>`).join("");
}

const STATES = ["finished", "running", "ready", "waiting", "failed", "canceled"];
function stateBar(j) {
  const total = Math.max(1, j.total);
  return `<div class="bar">` + STATES.map((s) => j[s] ? `<div class="s-${s}" style="width:${(100 * j[s]) / total}%" title="${s}: ${fmtInt(j[s])}"></div>` : "").join("") + `</div>`;
}
function renderProgress() {
  const jobs = snap.jobs.filter((j) => !j.done || Date.now() - (j.finished_at_ms || 0) < 600000).slice(-20);
  $("progress").innerHTML = jobs.length ? jobs.map((j) =>
    `<div class="job-row" data-job="${esc(j.id)}"><span>${esc(j.id)} <small>${esc(j.name)}</small></span>${stateBar(j)}<span>${fmtInt(j.finished)} / ${fmtInt(j.total)}${j.failed ? ` · <b class="warn">${fmtInt(j.failed)} failed</b>` : ""}</span></div>`
  ).join("") : "<p>No jobs yet.</p>";
}

function renderRate() {
  const pts = snap.throughput; const svg = $("rate");
  if (pts.length < 2) { svg.innerHTML = ""; return; }
  const tMin = pts[0][0], tMax = pts[pts.length - 1][0], vMax = Math.max(1, ...pts.map((p) => p[1]));
  const xy = pts.map(([t, v]) => `${((t - tMin) / Math.max(1, tMax - tMin)) * 600},${115 - (v / vMax) * 105}`).join(" ");
  svg.innerHTML = `<polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="${xy}"/>` +
    `<text x="4" y="12" font-size="10" fill="#6b7280">${fmtInt(Math.round(vMax))}/s</text>`;
}

function renderWorkers() {
  const rows = snap.workers.map((w) => {
    const cls = w.lost ? "lost" : w.draining ? "draining" : "";
    const state = w.lost ? "lost" : w.draining ? "draining" : "up";
    return `<tr class="${cls}" data-worker="${esc(w.id)}"><td>${esc(w.id)}</td><td>${esc(w.host)}</td><td>${w.pid}</td>` +
      `<td>${w.nanny ? esc(w.nanny) : "–"}</td><td>${w.slots}</td><td>${w.running}</td><td>${w.queued}</td>` +
      `<td>${w.cpu_pct == null ? "–" : w.cpu_pct.toFixed(0) + " %"}</td><td>${fmtBytes((w.rss_kib || 0) * 1024)}</td>` +
      `<td>${w.restarts ?? 0}</td><td>${fmtDur(w.last_heard_ms)} ago</td><td>${state}</td></tr>`;
  });
  $("workers").tBodies[0].innerHTML = rows.join("");
}

function renderJobs() {
  const rows = snap.jobs.slice().reverse().slice(0, 500).map((j) =>
    `<tr class="clickable" data-job="${esc(j.id)}"><td>${esc(j.id)}</td><td>${esc(j.name)}</td><td>${fmtInt(j.total)}</td>` +
    `<td style="min-width:200px">${stateBar(j)}</td><td>${fmtInt(j.failed)}</td><td>${j.done ? "done" : "running"}</td>` +
    `<td>${fmtTime(j.submitted_at_ms)}</td><td>${j.done ? fmtDur(j.finished_at_ms - j.submitted_at_ms) : "–"}</td></tr>`);
  const body = $("jobs").tBodies[0];
  body.innerHTML = rows.join("");
  for (const tr of body.rows) tr.onclick = () => { location.hash = "#jobs/" + encodeURIComponent(tr.dataset.job); };
}

async function loadJob(id) {
  const r = await fetch(withToken("/api/jobs/" + encodeURIComponent(id)));
  if (!r.ok) { $("jd-msg").textContent = await r.text(); return; }
  const j = await r.json();
  $("jd-id").textContent = j.id; $("jd-name").textContent = j.name;
  $("jd-summary").innerHTML = stateBar(j) + `<p>${fmtInt(j.finished)} of ${fmtInt(j.total)} finished, ${fmtInt(j.failed)} failed, ${fmtInt(j.canceled)} canceled</p>`;
  $("jd-failed").tBodies[0].innerHTML = j.failed_tasks.map((t) =>
    `<tr><td>${esc(t.task)}</td><td>${esc(t.key ?? "")}</td><td>${t.attempts}</td><td class="err">${esc(t.error)}</td></tr>`).join("");
  $("jd-retry").disabled = !j.failed; $("jd-cancel").disabled = j.done;
}
async function admin(action) {
  if (!shownJob) return;
  const r = await fetch("/api/jobs/" + encodeURIComponent(shownJob) + "/" + action, { method: "POST", headers: token ? { Authorization: "Bearer " + token } : {} });
  $("jd-msg").textContent = r.ok ? (await r.json()).message : (r.status === 401 || r.status === 403 ? "needs the cluster token: open the link `actord ctl dashboard` prints" : await r.text());
  loadJob(shownJob);
}
$("jd-retry").onclick = () => admin("retry");
$("jd-cancel").onclick = () => admin("cancel");

function renderSystem() {
  const s = snap.system;
  const items = [["epoch", s.epoch], ["uptime", fmtDur(s.uptime_ms)], ["started", fmtTime(s.started_at_ms)],
    ["address", s.address], ["security", s.security === "insecure" ? `<span class="warn">insecure: no TLS, no authentication</span>` : esc(s.security)],
    ["journal", esc(s.journal_path || "none (results in memory only)")], ["journal size", fmtBytes(s.journal_bytes)],
    ["last flush", s.last_flush_ms == null ? "–" : fmtDur(s.last_flush_ms) + " ago"], ["flush latency", s.flush_latency_us == null ? "–" : (s.flush_latency_us / 1000).toFixed(2) + " ms"],
    ["connections", fmtInt(s.connections)], ["version", esc(s.version)]];
  $("system").innerHTML = items.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
  $("events").tBodies[0].innerHTML = snap.events.slice().reverse().map((e) =>
    `<tr data-kind="${esc(e.kind)}"><td>${fmtTime(e.at_ms)}</td><td>${esc(e.kind)}</td><td>${esc(e.text)}</td></tr>`).join("");
}

showPage();
connect();
