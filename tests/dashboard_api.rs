//! The status page's HTTP API against real processes, over real HTTP (a
//! tiny HTTP/1 client on a TcpStream): the snapshot as a job runs, the
//! stream, the token rules and the actions, `/metrics`, history across a
//! kill -9 of the scheduler, and hostile requests.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const CONFIG: &str = "[scheduler]\nreclaim_grace = \"1s\"\n[worker]\nheartbeat = \"200ms\"\n";

/// A status (0 if the server closed without one) and a body.
fn http(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        r.push_str("Content-Length: 0\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// The page of a cluster: its address and token, from the scheduler file.
struct Page {
    addr: String,
    token: String,
}

impl Page {
    fn of(cluster: &Cluster) -> Page {
        let f: Value = serde_json::from_str(&std::fs::read_to_string(&cluster.file).unwrap()).unwrap();
        let url = f["dashboard"].as_str().expect("the scheduler file names the page").to_string();
        let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
        let out = cluster.run(&["ctl", "dashboard"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let link = stdout(&out);
        assert!(link.starts_with(&url), "{link} is the page's link");
        let token = link.split_once("?token=").expect("with its token").1.to_string();
        Page { addr, token }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http(&self.addr, &request("GET", path, &[]))
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn post(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http(&self.addr, &request("POST", path, &headers))
    }
}

fn cluster(workers: u32) -> Cluster {
    let mut c = Cluster::scheduler_with(Some(CONFIG), &["--dashboard", "127.0.0.1:0"]);
    c.start_nanny(workers, 1);
    c
}

/// Command tasks that say they started, then wait for `go`.
fn submit_gated(cluster: &Cluster, n: u32) -> String {
    let script = format!(
        "touch {}/started-$ACTORD_TASK; while [ ! -e {} ]; do sleep 0.02; done",
        cluster.dir.path().display(),
        cluster.path("go").display()
    );
    let out = cluster.run(&["submit", "--array", &format!("1-{n}"), "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn job_row<'a>(snap: &'a Value, job: &str) -> Option<&'a Value> {
    snap["jobs"].as_array()?.iter().find(|j| j["id"] == job)
}

fn kinds(snap: &Value) -> Vec<String> {
    snap["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
}

#[test]
fn the_snapshot_follows_a_job_and_metrics_parse() {
    let c = cluster(2);
    let page = Page::of(&c);
    assert_eq!(page.get("/health"), (200, "ok".into()));
    let (status, html) = page.get("/");
    assert!(status == 200 && html.contains("<html"), "{status}");
    let snap = page.json("/api/snapshot");
    assert_eq!(snap["totals"]["workers"], 2, "{snap}");
    assert_eq!(snap["totals"]["slots"], 2);
    assert!(kinds(&snap).iter().filter(|k| *k == "worker-joined").count() >= 2, "{snap}");
    assert!(kinds(&snap).contains(&"scheduler-started".to_string()));
    assert_eq!(
        snap["system"]["address"],
        std::fs::read_to_string(&c.file)
            .map(|f| { serde_json::from_str::<Value>(&f).unwrap()["address"].clone() })
            .unwrap()
    );

    let job = submit_gated(&c, 6);
    let running = wait_until(Duration::from_secs(20), || {
        let s = page.json("/api/snapshot");
        job_row(&s, &job).is_some_and(|j| {
            j["running"] == 2 && j["queued"].as_u64() == Some(6 - 2 - j["ready"].as_u64().unwrap())
        }) && s["totals"]["running"] == 2
    });
    assert!(running, "two tasks run: {}", page.json("/api/jobs"));
    std::fs::write(c.path("go"), "").unwrap();
    let done = wait_until(Duration::from_secs(30), || {
        let s = page.json("/api/snapshot");
        job_row(&s, &job).is_some_and(|j| j["done"] == true && j["finished"] == 6)
    });
    assert!(done, "{}", page.json("/api/jobs"));
    let snap = page.json("/api/snapshot");
    let row = job_row(&snap, &job).unwrap();
    assert!(row["finished_at_ms"].as_u64().unwrap() >= row["submitted_at_ms"].as_u64().unwrap());
    let bars = snap["stream"]["bars"].as_array().unwrap();
    let lanes = snap["stream"]["lanes"].as_array().unwrap();
    assert_eq!(lanes.len(), 2, "a lane per slot: {lanes:?}");
    assert_eq!(
        bars.iter().map(|b| b["n"].as_u64().unwrap()).sum::<u64>(),
        6,
        "every task in a bar: {bars:?}"
    );
    assert!(bars.iter().all(|b| b["func"] == "sh" && lanes.contains(&b["lane"])), "{bars:?}");
    assert_eq!(snap["totals"]["finished"], 6);

    let (status, metrics) = page.get("/metrics");
    assert_eq!(status, 200);
    let mut samples = std::collections::HashMap::new();
    for line in metrics.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        samples.insert(name.to_string(), v);
    }
    assert_eq!(samples["actord_workers"], 2.0, "{metrics}");
    assert_eq!(samples["actord_tasks{state=\"finished\"}"], 6.0);
    assert!(samples["actord_task_outcomes_total"] >= 6.0);
    assert!(samples["actord_journal_flush_seconds_count"] >= 1.0);
    assert!(samples.contains_key("actord_connections"));

    // The stream sends snapshots, and a new one when something changes.
    let mut s = TcpStream::connect(&page.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&request("GET", "/api/stream", &[])).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 65536];
    while seen.matches("event: snapshot").count() < 2 {
        let n = s.read(&mut buf).expect("the stream goes on");
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    // A page reconnects within a second after a scheduler restart.
    assert!(seen.contains("\nretry: 1000\n"), "{seen}");
}

#[test]
fn tokens_guard_actions_and_the_page_off_loopback() {
    let c = cluster(1);
    let page = Page::of(&c);
    assert_eq!(page.get("/api/workers").0, 200, "loopback reads need no token");
    let wrong = "0".repeat(64);
    assert_eq!(page.get(&format!("/api/workers?token={wrong}")).0, 401, "a wrong token is refused");
    assert_eq!(page.get(&format!("/api/workers?token={}", page.token)).0, 200);

    let out = c.run(&["submit", "--fn", "fail"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let failing = stdout(&out);
    let failed =
        wait_until(Duration::from_secs(20), || page.json(&format!("/api/jobs/{failing}"))["failed"] == 1);
    assert!(failed);
    let detail = page.json(&format!("/api/jobs/{failing}"));
    let tasks = detail["failed_tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{detail}");
    assert!(!tasks[0]["error"].as_str().unwrap().is_empty(), "{detail}");

    let retry = format!("/api/jobs/{failing}/retry");
    let (status, body) = page.post(&retry, None);
    assert_eq!(status, 401, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    assert_eq!(page.post(&retry, Some(&wrong)).0, 401);
    let before = page.json(&format!("/api/jobs/{failing}"));
    assert_eq!(before["failed"], 1, "nothing changed: {before}");
    let (status, body) = page.post(&retry, Some(&page.token));
    assert_eq!(status, 200, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["message"].is_string(), "{body}");
    let retried = wait_until(Duration::from_secs(20), || {
        page.json(&format!("/api/jobs/{failing}"))["failed_tasks"][0]["attempts"] == 2
    });
    assert!(retried, "the task ran again: {}", page.json(&format!("/api/jobs/{failing}")));

    let gated = submit_gated(&c, 3);
    let cancel = format!("/api/jobs/{gated}/cancel");
    assert_eq!(page.post(&cancel, None).0, 401);
    let (status, body) = page.post(&cancel, Some(&page.token));
    assert_eq!(status, 200, "{body}");
    let canceled = wait_until(Duration::from_secs(20), || {
        let j = page.json(&format!("/api/jobs/{gated}"));
        j["done"] == true && j["canceled"] == 3
    });
    assert!(canceled, "{}", page.json(&format!("/api/jobs/{gated}")));

    // A page on every interface asks loopback for the token too.
    let wide = Cluster::scheduler_with(Some(CONFIG), &["--dashboard", "0.0.0.0:0"]);
    let f: Value = serde_json::from_str(&std::fs::read_to_string(&wide.file).unwrap()).unwrap();
    let port = f["dashboard"].as_str().unwrap().trim_end_matches('/').rsplit(':').next().unwrap().to_string();
    let local = Page { addr: format!("127.0.0.1:{port}"), token: Page::of(&wide).token };
    assert_eq!(local.get("/api/snapshot").0, 401);
    assert_eq!(local.get(&format!("/api/snapshot?token={}", local.token)).0, 200);
    assert_eq!(local.get("/health").0, 200);
}

#[test]
fn events_and_job_times_survive_a_scheduler_kill() {
    let mut c = cluster(1);
    let page = Page::of(&c);
    let out = c.run(&["submit", "--fn", "inc", "--args", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = stdout(&out);
    assert_eq!(c.run(&["gather", &job]).status.code(), Some(0));
    let (_, pid, _) = c.workers()[0].clone();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let respawned = wait_until(Duration::from_secs(30), || {
        let s = page.json("/api/snapshot");
        let k = kinds(&s);
        let lost = k.iter().position(|k| k == "worker-lost");
        lost.is_some_and(|i| k[i..].iter().any(|k| k == "worker-respawned"))
            && s["workers"].as_array().unwrap().iter().any(|w| w["lost"] == true)
            && s["totals"]["workers"] == 1
    });
    assert!(respawned, "lost, then respawned: {}", page.json("/api/events"));
    let before = page.json("/api/snapshot");
    let times = job_row(&before, &job).map(|j| (j["submitted_at_ms"].clone(), j["finished_at_ms"].clone()));

    c.kill_scheduler();
    c.restart_scheduler();
    let page = Page::of(&c);
    let after = page.json("/api/snapshot");
    let k = kinds(&after);
    for kind in
        ["worker-lost", "worker-respawned", "scheduler-started", "scheduler-restarted", "journal-replayed"]
    {
        assert!(k.iter().any(|x| x == kind), "{kind} in {k:?}");
    }
    let old: Vec<&Value> = before["events"].as_array().unwrap().iter().collect();
    let new = after["events"].as_array().unwrap();
    assert!(old.iter().all(|e| new.contains(e)), "every earlier event is still shown");
    assert_eq!(after["system"]["epoch"], 1);
    let again = job_row(&after, &job).map(|j| (j["submitted_at_ms"].clone(), j["finished_at_ms"].clone()));
    assert_eq!(again, times, "the job's timing came back from the journal");
}

#[test]
fn hostile_requests_get_4xx_and_the_scheduler_lives() {
    let c = cluster(1);
    let page = Page::of(&c);
    let huge = format!("POST /api/jobs/x/retry HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", 64 << 20);
    let (status, _) = http(&page.addr, huge.as_bytes());
    assert_eq!(status, 413);
    let mut many = String::from("GET /api/snapshot HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let (status, _) = http(&page.addr, many.as_bytes());
    assert!(status == 431 || status == 400 || status == 0, "{status}");
    assert_eq!(page.get("/api/jobs/not-a-uuid").0, 400);
    assert_eq!(page.get(&format!("/api/jobs/{}", "9".repeat(5000))).0, 400);
    assert_eq!(page.get("/api/jobs/0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a").0, 404);
    let t = page.token.clone();
    assert_eq!(page.post("/api/jobs/0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a/retry", Some(&t)).0, 404);
    assert_eq!(page.post("/api/jobs/0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a/explode", Some(&t)).0, 404);
    assert_eq!(page.get("/../../etc/passwd").0, 404);
    assert_eq!(page.get("/api/%00%ff").0, 404);
    assert!(page.get(&format!("/{}", "a".repeat(100_000))).0 >= 400);
    let (status, _) = http(&page.addr, b"\x16\x03\x01garbage\r\n\r\n");
    assert!(status == 400 || status == 0, "{status}");
    assert_eq!(page.get("/health"), (200, "ok".into()));
    assert_eq!(page.json("/api/snapshot")["totals"]["workers"], 1);
    let out = c.run(&["ctl", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("dashboard  http://"), "{}", stdout(&out));
}

#[test]
fn an_explicit_busy_address_fails_at_start_in_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = actord()
        .args(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-journal", "--dashboard", &addr])
        .arg("--scheduler-file")
        .arg(dir.path().join("s.json"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot serve the status page on {addr}")), "{err}");
    assert!(!dir.path().join("s.json").exists(), "nothing was started");
    let off = Cluster::scheduler_with(None, &["--no-dashboard"]);
    let f: Value = serde_json::from_str(&std::fs::read_to_string(&off.file).unwrap()).unwrap();
    assert!(f["dashboard"].is_null(), "{f}");
    let out = off.run(&["ctl", "dashboard"]);
    assert!(!out.status.success() && stderr(&out).contains("no status page"), "{}", stderr(&out));
}
