//! The status page in a real headless Chromium: the driver itself (against a
//! page served by the test), then the page against real scheduler processes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::browser::Browser;
use common::{stderr, stdout, Cluster};

/// Launches Chromium, or says why this machine skips the test.
macro_rules! browser_or_skip {
    ($w:expr, $h:expr) => {
        match Browser::launch($w, $h) {
            Ok(b) => b,
            Err(why) => {
                eprintln!("SKIPPED: no Chromium here and it cannot be installed: {why}");
                return;
            }
        }
    };
}

/// One HTTP request as a test site sees it.
struct Req {
    method: String,
    path: String,
    /// Header lines, lower-cased names: `name: value`.
    headers: Vec<String>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.headers.iter().find_map(|h| h.strip_prefix(&prefix))
    }
}

/// Answers one request: (the request, the connection, the site's stop flag).
type Handler = dyn Fn(&Req, &mut std::net::TcpStream, &AtomicBool) + Send + Sync;

/// A test-local web site on 127.0.0.1:port0, a thread per connection, until dropped.
struct Site {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Site {
    fn serve(handler: Arc<Handler>) -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (h, f) = (handler.clone(), flag.clone());
                        std::thread::spawn(move || answer(s, &*h, &f));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Site { addr, stop, thread: Some(thread) }
    }

    /// One page at `/`, 404 elsewhere.
    fn page(html: &'static str) -> Site {
        Site::serve(Arc::new(move |r: &Req, s: &mut std::net::TcpStream, _: &AtomicBool| {
            match r.path.as_str() {
                "/" => reply(s, "200 OK", "text/html", html),
                _ => reply(s, "404 Not Found", "text/plain", ""),
            }
        }))
    }
}

fn answer(stream: std::net::TcpStream, handler: &Handler, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    let _ = reader.read_line(&mut request);
    let mut headers = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.push(format!("{}: {}", k.to_ascii_lowercase(), v.trim()));
        }
        line.clear();
    }
    let mut words = request.split(' ');
    let method = words.next().unwrap_or("").to_string();
    let target = words.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    let req = Req { method, path: path.to_string(), headers };
    handler(&req, reader.get_mut(), stop);
}

fn reply(s: &mut std::net::TcpStream, status: &str, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body.as_bytes()));
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const COUNTER_PAGE: &str = r#"<!doctype html><html><body data-ticks="0">
<h1 id="t">counter</h1><input id="v" value="typed">
<script>
let n = 0;
setInterval(() => { n++; document.body.dataset.ticks = String(n); }, 20);
</script></body></html>"#;

#[test]
fn driver_navigates_evaluates_and_screenshots_a_served_page() {
    let page = Site::page(COUNTER_PAGE);
    let mut b = browser_or_skip!(800, 600);
    let pid = b.pid();
    b.navigate(&format!("http://{}/", page.addr));
    assert_eq!(b.text("document.getElementById('t').textContent"), "counter");
    assert_eq!(b.text("document.getElementById('v').value"), "typed");
    // Page state moves: a data attribute written by a timer is read back live.
    let first: u64 = b.text("document.body.dataset.ticks").parse().unwrap();
    assert!(b.wait_for(&format!("+document.body.dataset.ticks > {first} + 5"), Duration::from_secs(10)));
    let shot = b.screenshot("driver-static-page");
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", shot.display());
    assert!(png.len() > 1000, "a real picture, not an empty file");
    assert!(b.errors.is_empty(), "page errors: {:?}", b.errors);
    drop(b);
    assert!(
        common::wait_until(Duration::from_secs(5), || !common::pid_alive(pid)),
        "chromium {pid} outlived its guard"
    );
}

/// A number the page wrote on an element (`data-*`), or -1 when it is absent.
fn num(b: &mut Browser, expr: &str) -> f64 {
    b.eval(&format!("(() => {{ const v = {expr}; return v == null || v === '' ? -1 : +v; }})()"))
        .as_f64()
        .unwrap_or(-1.0)
}

const WAIT: Duration = Duration::from_secs(30);

/// The page's own render times (ms) so far, oldest first.
fn render_times(b: &mut Browser) -> Vec<f64> {
    let v = b.eval("window.actordRenderTimes.slice()");
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default()
}

/// The `p` quantile of sorted figures (nearest rank), to 0.1.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[i.min(sorted.len() - 1)] * 10.0).round() / 10.0
}

/// Bounds for a page that stays usable (a snapshot comes every 500 ms): its
/// own cost per update small (median under 25 ms), updates that keep up
/// (p95 under 250 ms: of ~30 renders that is the second slowest, and like
/// the max it is wall time), none that stalls the tab (500 ms: wall time,
/// which includes the renderer being preempted on a 2-core machine running
/// 128 worker threads beside other work);
/// and a JS heap far below what makes a tab sluggish (200 MB: the page keeps
/// one bounded snapshot at a time).
const RENDER_P50_MS: f64 = 25.0;
const RENDER_P95_MS: f64 = 250.0;
const RENDER_MAX_MS: f64 = 500.0;
const HEAP_MAX_BYTES: f64 = 200e6;

// ---- the page at the snapshot's bounds, fed by the test ----

const INDEX: &str = include_str!("../src/dashboard/assets/index.html");
const APP_JS: &str = include_str!("../src/dashboard/assets/app.js");
const APP_CSS: &str = include_str!("../src/dashboard/assets/app.css");
const FEED_TOKEN: &str = "feedtoken";
/// A hostile error text: the page must show it as text.
const HOSTILE: &str = "<img src=x onerror=\"document.body.dataset.pwned=1\"> boom";

/// A snapshot as large as the server ever sends for 128 workers: 500 jobs,
/// 2,000 task-stream bars on 128 lanes, 300 throughput points, 200 events.
fn full_snapshot(frame: u64) -> serde_json::Value {
    use serde_json::json;
    let now = 1_800_000_000_000u64 + frame * 250;
    let workers: Vec<_> = (0..128)
        .map(|i| {
            json!({"id": format!("w{i}"), "host": "node1", "pid": 1000 + i, "nanny": "77/0", "slots": 1,
            "running": 1, "queued": frame % 7, "cpu_pct": null, "rss_kib": 20_000 + frame, "restarts": i % 3,
            "last_heard_ms": frame % 900, "lost": i == 5, "draining": false})
        })
        .collect();
    let lanes: Vec<String> = (0..128).map(|i| format!("w{i}/0")).collect();
    let funcs = ["noop", "inc", "darts", "sleep", "py:mod.f"];
    let bars: Vec<_> = (0..2000u64)
        .map(|k| {
            let end = now - (k * 7919 + frame * 31) % 30_000;
            json!({"lane": lanes[(k % 128) as usize], "start_ms": end - 10 - k % 400, "end_ms": end,
                "func": funcs[(k % 5) as usize], "n": 1 + k % 40})
        })
        .collect();
    let jobs: Vec<_> = (0..500u64)
        .map(|j| json!({"id": format!("{j:08x}-0000-4000-8000-000000000000"), "name": format!("map {}", funcs[(j % 5) as usize]),
            "total": 1000, "finished": (frame * 10 + j).min(1000), "running": 4, "queued": 3, "ready": 10, "waiting": 20,
            "failed": j % 4, "canceled": 0, "done": j < 400, "submitted_at_ms": now - 100_000, "finished_at_ms": if j < 400 { Some(now) } else { None }}))
        .collect();
    let throughput: Vec<_> =
        (0..300u64).map(|i| json!([now - (300 - i) * 1000, ((i * 37 + frame) % 100) * 1000])).collect();
    let kinds = ["worker-lost", "worker-respawned", "scheduler-restarted", "journal-replayed"];
    let events: Vec<_> = (0..200u64)
        .map(|i| json!({"at_ms": now - (200 - i) * 1000, "kind": kinds[(i % 4) as usize], "text": format!("event {i} {HOSTILE}")}))
        .collect();
    json!({
        "totals": {"workers": 127, "slots": 128, "running": 128, "rate": 98765.4, "finished": frame * 1000, "failed": 375},
        "workers": workers, "jobs": jobs, "throughput": throughput,
        "stream": {"now_ms": now, "window_ms": 30_000, "lanes": lanes, "bars": bars},
        "events": events,
        "system": {"epoch": 3, "uptime_ms": frame * 250, "started_at_ms": now - frame * 250, "address": "tcp://127.0.0.1:1",
            "security": "tls+auth", "journal_path": "/scratch/actord/journal", "journal_bytes": 123_456_789,
            "last_flush_ms": 2, "flush_latency_us": 900, "connections": 130, "version": "test"}
    })
}

fn job_detail() -> String {
    let failed: Vec<_> = (0..100).map(|t| serde_json::json!({"task": t, "key": null, "attempts": 3, "state": "failed", "error": HOSTILE})).collect();
    let mut j = full_snapshot(0)["jobs"][499].clone();
    j["failed_tasks"] = serde_json::json!(failed);
    j.to_string()
}

/// The page's assets, a snapshot stream (a new snapshot every 250 ms, for
/// at most two minutes), one job's detail and its retry action.
fn feed(r: &Req, s: &mut std::net::TcpStream, stop: &AtomicBool) {
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/") => reply(s, "200 OK", "text/html", INDEX),
        ("GET", "/static/app.js") => reply(s, "200 OK", "text/javascript", APP_JS),
        ("GET", "/static/app.css") => reply(s, "200 OK", "text/css", APP_CSS),
        ("GET", "/api/stream") => {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n",
            );
            for frame in 0..480 {
                let msg = format!("event: snapshot\ndata: {}\n\n", full_snapshot(frame));
                if stop.load(Ordering::Relaxed) || s.write_all(msg.as_bytes()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        ("GET", p) if p.starts_with("/api/jobs/") => reply(s, "200 OK", "application/json", &job_detail()),
        ("POST", p) if p.ends_with("/retry") => match r.header("authorization") {
            Some(a) if a == format!("Bearer {FEED_TOKEN}") => {
                reply(s, "200 OK", "application/json", r#"{"message":"retrying 100 tasks"}"#)
            }
            _ => reply(s, "401 Unauthorized", "text/plain", "a token is needed"),
        },
        _ => reply(s, "404 Not Found", "text/plain", "not here"),
    }
}

/// Renders of the last `n` updates on the current view, in ms.
fn last_renders(b: &mut Browser, n: usize) -> Vec<f64> {
    let all = render_times(b);
    all[all.len().saturating_sub(n)..].to_vec()
}

#[test]
fn page_draws_a_full_snapshot_on_every_view_within_bounds() {
    let site = Site::serve(Arc::new(feed));
    let mut b = browser_or_skip!(1280, 1000);
    b.navigate(&format!("http://{}/?token={FEED_TOKEN}#status", site.addr));
    if !b.wait_for("+document.body.dataset.renders >= 4", WAIT) {
        let state = b.text("JSON.stringify([document.visibilityState, document.body.dataset])");
        panic!("no snapshot drawn: {state} {:?}", b.errors);
    }
    assert!(!b.text("location.href").contains(FEED_TOKEN), "the token is taken out of the address bar");
    assert_eq!(num(&mut b, "document.getElementById('stream').dataset.bars"), 2000.0);
    assert_eq!(num(&mut b, "document.getElementById('stream').dataset.lanes"), 128.0);
    assert_eq!(b.text("document.getElementById('n-workers').textContent"), "127");
    let mut report = serde_json::Map::new();
    let checks = [
        ("status", "document.querySelectorAll('#progress .job-row').length === 20"),
        ("workers", "document.querySelectorAll('#workers tbody tr').length === 128"),
        ("jobs", "document.querySelectorAll('#jobs tbody tr').length === 100 && document.getElementById('jobs-pager').textContent.includes('1–100 of 500')"),
        ("system", "document.querySelectorAll('#events tbody tr').length === 200"),
    ];
    for (view, shown) in checks {
        b.eval(&format!("location.hash = '#{view}'"));
        assert!(b.wait_for(shown, WAIT), "{view}: not all rows shown");
        let seen = num(&mut b, "document.body.dataset.renders");
        assert!(
            b.wait_for(&format!("+document.body.dataset.renders >= {seen} + 10"), WAIT),
            "{view}: updates stopped"
        );
        let mut times = last_renders(&mut b, 10);
        times.sort_by(f64::total_cmp);
        b.screenshot(&format!("full-snapshot-{view}"));
        let (p50, max) = (percentile(&times, 0.5), percentile(&times, 1.0));
        report.insert(view.into(), serde_json::json!({"render_ms_p50": p50, "render_ms_max": max}));
        assert!(max < RENDER_MAX_MS, "{view}: a render took {max} ms: {times:?}");
    }
    let heap = num(&mut b, "document.body.dataset.heapBytes");
    report.insert("heap_bytes".into(), heap.into());
    println!("{}", serde_json::json!({"bench": "status-page-full-snapshot", "views": report}));
    assert!(heap > 0.0 && heap < HEAP_MAX_BYTES, "JS heap {heap} bytes");

    // A job's detail: its failed tasks, their errors shown as text, and the
    // retry button sending the token.
    b.eval("location.hash = '#jobs/000001f3-0000-4000-8000-000000000000'");
    assert!(b.wait_for("document.querySelectorAll('#jd-failed tbody tr').length === 100", WAIT));
    assert!(b.text("document.querySelector('#jd-failed td.err').textContent").starts_with("<img"));
    assert!(
        b.eval("document.querySelector('img') === null && !document.body.dataset.pwned") == true,
        "an error text became markup"
    );
    b.eval("document.getElementById('jd-retry').click()");
    assert!(b.wait_for("document.getElementById('jd-msg').textContent === 'retrying 100 tasks'", WAIT));
    b.screenshot("full-snapshot-job-detail");
    assert!(b.errors.is_empty(), "page errors: {:?}", b.errors);
}

// ---- the page against real scheduler, nanny and worker processes ----

/// A port free right now on 127.0.0.1, so that a restarted scheduler serves
/// its page where the open page reconnects to.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The page's URL from the scheduler file (loopback: no token needed to read).
fn page_url(c: &Cluster) -> String {
    let text = std::fs::read_to_string(&c.file).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["dashboard"]
        .as_str()
        .unwrap_or_else(|| panic!("no dashboard in the scheduler file: {text}"))
        .to_string()
}

fn inputs(c: &Cluster, n: usize, line: &str) -> String {
    let path = c.path("inputs.jsonl");
    std::fs::write(&path, format!("{line}\n").repeat(n)).unwrap();
    path.display().to_string()
}

#[test]
fn page_follows_a_job_a_lost_worker_and_a_scheduler_restart() {
    let port = free_port().to_string();
    let mut c = Cluster::scheduler_with(None, &["--dashboard", &format!("127.0.0.1:{port}")]);
    let url = page_url(&c);
    assert!(url.contains(&port), "the page is served where asked: {url}");
    let mut b = browser_or_skip!(1280, 1000);
    b.navigate(&url);
    assert!(b.wait_for("document.body.dataset.live === '1' && document.body.dataset.workers === '0'", WAIT));

    // Workers join: the count on the page follows.
    c.start_nanny(2, 2);
    assert!(b.wait_for("document.body.dataset.workers === '2'", WAIT), "page never showed 2 workers");
    assert_eq!(b.text("document.getElementById('n-slots').textContent"), "4");

    // A job runs: its progress and the task stream move.
    let file = inputs(&c, 600, "30");
    let out = c.run(&["map", "sleep", "--inputs", &file]);
    assert!(out.status.success(), "map: {}", stderr(&out));
    let job = stdout(&out);
    let row = format!("document.querySelector('#progress [data-job=\"{job}\"]')");
    assert!(b.wait_for(&format!("{row} && +{row}.dataset.finished > 0"), WAIT), "no progress shown");
    let first = num(&mut b, &format!("{row}.dataset.finished"));
    let stream_end = num(&mut b, "document.getElementById('stream').dataset.lastEnd");
    assert!(
        b.wait_for(&format!("+{row}.dataset.finished > {first} + 20"), WAIT),
        "progress stuck at {first}"
    );
    assert!(b.wait_for("+document.getElementById('stream').dataset.bars > 0", WAIT), "no task-stream bars");
    assert!(
        b.wait_for(&format!("+document.getElementById('stream').dataset.lastEnd > {stream_end}"), WAIT),
        "the task stream never moved"
    );
    b.screenshot("status-running");

    // kill -9 of a worker: shown as lost, then its replacement comes up.
    b.eval("location.hash = '#workers'");
    let rows = "[...document.querySelectorAll('#workers tbody tr')]";
    assert!(b.wait_for(&format!("{rows}.filter(r => r.dataset.state === 'up').length === 2"), WAIT));
    let victim = num(&mut b, &format!("{rows}.find(r => r.dataset.state === 'up').dataset.pid")) as i32;
    assert!(victim > 0, "a worker pid on the page");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), nix::sys::signal::Signal::SIGKILL).unwrap();
    let lost = format!("{rows}.some(r => r.dataset.pid === '{victim}' && r.dataset.state === 'lost')");
    assert!(b.wait_for(&lost, WAIT), "worker {victim} never shown as lost");
    let respawned =
        format!("{rows}.filter(r => r.dataset.state === 'up' && r.dataset.pid !== '{victim}').length === 2");
    assert!(b.wait_for(&respawned, WAIT), "no replacement for worker {victim} shown");
    b.screenshot("workers-after-kill");
    b.eval("location.hash = '#status'");
    assert!(b.wait_for("document.getElementById('n-lost').textContent === '1 lost'", WAIT));
    b.screenshot("status-after-kill");
    b.eval("location.hash = '#system'");
    let event = |kind: &str| format!("document.querySelector('#events tr[data-kind=\"{kind}\"]') !== null");
    assert!(b.wait_for(&event("worker-lost"), WAIT), "no worker-lost event shown");
    assert!(b.wait_for(&event("worker-respawned"), WAIT), "no worker-respawned event shown");
    let before = num(&mut b, "document.querySelectorAll('#events tbody tr').length");

    // kill -9 of the scheduler: the page says so, and reconnects by itself to
    // the restarted one (same journal, same page address).
    c.kill_scheduler();
    assert!(b.wait_for("document.body.dataset.live === '0'", WAIT), "page never noticed the scheduler died");
    assert!(b.text("document.getElementById('conn').textContent").contains("reconnecting"));
    b.screenshot("reconnecting");
    c.restart_scheduler();
    assert_eq!(page_url(&c), url, "the restarted scheduler serves its page at the same address");
    assert!(
        b.wait_for("document.body.dataset.live === '1' && document.body.dataset.epoch === '1'", WAIT),
        "page never reconnected to the restarted scheduler:\n{}",
        c.scheduler.log_text()
    );
    // What happened before the restart is still shown, from the journal.
    assert!(b.wait_for(&event("scheduler-restarted"), WAIT), "no scheduler-restarted event");
    assert!(b.wait_for(&event("worker-lost"), WAIT), "the worker-lost event did not survive the restart");
    assert!(b.wait_for(&event("worker-respawned"), WAIT), "the respawn event did not survive the restart");
    assert!(num(&mut b, "document.querySelectorAll('#events tbody tr').length") > before);
    b.screenshot("system-after-restart");

    // The job finishes on the restarted scheduler and the page says so.
    let results = c.path("results.json").display().to_string();
    let out = c.run(&["gather", &job, "--out", &results]);
    assert!(out.status.success(), "gather: {}", stderr(&out));
    b.eval("location.hash = '#status'");
    assert!(b.wait_for(&format!("{row} && {row}.dataset.finished === '600'"), WAIT));
    b.screenshot("status-done");
    assert!(b.errors.is_empty(), "page errors: {:?}", b.errors);
}

/// Runs one `map noop` over `tasks` inputs to the end (gathered), turning
/// the page through every view meanwhile; returns the wall time (s) and the
/// largest JS heap seen.
fn noop_round(c: &Cluster, b: &mut Browser, tasks: usize, round: usize) -> (f64, f64) {
    let file = inputs(c, tasks, "null");
    let start = std::time::Instant::now();
    let out = c.run(&["map", "noop", "--inputs", &file]);
    assert!(out.status.success(), "map: {}", stderr(&out));
    let job = stdout(&out);
    let results = c.path(&format!("results-{round}.json")).display().to_string();
    let mut gather = common::Proc::spawn(
        &format!("gather-{round}"),
        c.command(&["gather", &job, "--out", &results]),
        c.dir.path(),
    );
    let views = ["status", "workers", "jobs", "system"];
    let (mut heap, mut samples) = (0f64, 0usize);
    let done = loop {
        if let Some(s) = gather.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "{tasks} noop tasks took over 300 s");
        heap = heap.max(num(b, "document.body.dataset.heapBytes"));
        samples += 1;
        if samples % 5 == 0 {
            b.eval(&format!("location.hash = '#{}'", views[(samples / 5) % views.len()]));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = start.elapsed().as_secs_f64();
    assert!(done.success(), "gather: {}", gather.log_text());
    (wall, heap)
}

/// 128 worker slots (32 workers × 4 threads) and jobs of 100,000 noop tasks
/// with the page open, until it has drawn 30 updates during jobs (20 at least).
#[test]
fn page_stays_responsive_at_100k_tasks_and_128_slots() {
    let (workers, threads) = (32u32, 4u32);
    let tasks = 100_000usize;
    let mut c = Cluster::scheduler_with(None, &["--dashboard", "127.0.0.1:0"]);
    let url = page_url(&c);
    let mut b = browser_or_skip!(1280, 1000);
    b.navigate(&url);
    c.start_nanny(workers, threads);
    assert!(b.wait_for(&format!("document.body.dataset.workers === '{workers}'"), WAIT));
    let lanes = format!("+document.getElementById('stream').dataset.lanes === {}", workers * threads);
    assert!(b.wait_for(&lanes, WAIT), "not a lane per slot");

    let (mut times, mut walls, mut heap_max) = (Vec::new(), Vec::new(), 0f64);
    for round in 1..=30 {
        let before = num(&mut b, "document.body.dataset.renders");
        let (wall, heap) = noop_round(&c, &mut b, tasks, round);
        // The renders of this round (the page keeps the last 600).
        let during = (num(&mut b, "document.body.dataset.renders") - before).max(0.0) as usize;
        let all = render_times(&mut b);
        times.extend_from_slice(&all[all.len().saturating_sub(during)..]);
        walls.push(wall);
        heap_max = heap_max.max(heap);
        if times.len() >= 30 {
            break;
        }
    }
    b.eval("location.hash = '#status'");
    let all_done = format!("+document.body.dataset.finished === {}", tasks * walls.len());
    assert!(b.wait_for(&all_done, WAIT), "page never showed all tasks finished");
    heap_max = heap_max.max(num(&mut b, "document.body.dataset.heapBytes"));
    b.screenshot("status-100k-tasks-128-slots");
    b.eval("location.hash = '#workers'");
    assert!(b.wait_for(&format!("document.querySelectorAll('#workers tbody tr').length === {workers}"), WAIT));
    b.screenshot("workers-128-slots");

    times.sort_by(f64::total_cmp);
    walls.sort_by(f64::total_cmp);
    let (p50, p95, max) = (percentile(&times, 0.5), percentile(&times, 0.95), percentile(&times, 1.0));
    println!(
        "{}",
        serde_json::json!({
            "bench": "status-page", "tasks_per_job": tasks, "jobs": walls.len(), "workers": workers,
            "threads_per_worker": threads, "slots": workers * threads, "wall_s_per_job": walls,
            "renders": times.len(), "render_ms_p50": p50, "render_ms_p95": p95, "render_ms_max": max,
            "heap_bytes_max": heap_max,
        })
    );
    assert!(times.len() >= 20, "the page drew only {} updates during {} jobs", times.len(), walls.len());
    assert!(p50 < RENDER_P50_MS, "render median {p50} ms (bound {RENDER_P50_MS})");
    assert!(p95 < RENDER_P95_MS, "render p95 {p95} ms (bound {RENDER_P95_MS})");
    assert!(max < RENDER_MAX_MS, "render max {max} ms (bound {RENDER_MAX_MS})");
    assert!(heap_max > 0.0 && heap_max < HEAP_MAX_BYTES, "JS heap {heap_max} bytes (bound {HEAP_MAX_BYTES})");
    assert!(b.errors.is_empty(), "page errors: {:?}", b.errors);
}
