//! Hostile peers and unlucky operators against a real scheduler: each case
//! once wedged, bloated or fooled it; now each gets a clear error and
//! everyone else carries on.

mod common;

use actord::protocol::conn::{decode, encode, next_frame};
use actord::protocol::{
    Conn, FromClient, Hello, HelloReply, Role, ToClient, DEFAULT_MAX_FRAME, MAGIC, PROTOCOL_VERSION,
};
use actord::schedfile::SchedulerFile;
use actord::security::handshake;
use common::*;
use futures::SinkExt;
use std::io::{BufRead, Read};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A `/proc/PID/status` figure (`VmRSS`, `VmSize`) in MiB.
fn vm_mib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib / 1024
}

fn submit_and_gather(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let out = cluster.run(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    let out = cluster.run(&["gather", &stdout(&out)]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("gather: {e}: {}", stderr(&out)))
}

/// A 14 MB argument to `fail` once made a ~70 MB error that no frame could
/// carry: the worker reconnected forever and later jobs never finished.
#[test]
fn a_huge_task_error_is_cut_short_and_later_jobs_finish() {
    let cluster = Cluster::start(2, 1);
    let pids = cluster.worker_pids();
    let line = format!("[{}255]\n", "255, ".repeat(14 << 18));
    let inputs = cluster.path("huge.jsonl");
    std::fs::write(&inputs, line).unwrap();
    let doc = submit_and_gather(&cluster, &["map", "fail", "--inputs", inputs.to_str().unwrap()]);
    let error = doc["failures"][0]["error"].as_str().expect("the task failed with an error");
    assert!(error.len() <= 64 << 10, "error of {} bytes", error.len());
    assert!(
        error.contains("error cut short") && error.contains("worker.max_error"),
        "{}",
        &error[error.len() - 200..]
    );

    let doc = submit_and_gather(&cluster, &["submit", "--array", "1-2000", "--output", "none", "--", "true"]);
    assert_eq!(doc["failures"].as_array().map(|f| f.len()), Some(0), "{doc}");
    assert_eq!(doc["results"].as_array().map(|r| r.len()), Some(2000));
    assert_eq!(cluster.worker_pids(), pids, "no worker was lost or replaced");
    let nanny_log = cluster.nanny.as_ref().unwrap().log_text();
    assert!(!nanny_log.contains("lost the scheduler"), "a worker reconnected:\n{nanny_log}");
}

/// Before the handshake only small frames are accepted, and a declared
/// length reserves nothing: 100 peers announcing 64 MiB frames cost nothing.
#[tokio::test]
async fn unauthenticated_peers_cannot_make_the_scheduler_allocate() {
    let cluster = Cluster::scheduler_with(None, &["--no-tls"]);
    let file = SchedulerFile::read(&cluster.file).unwrap();
    let pid = cluster.scheduler.pid();
    // Reserved address space, not only touched pages: a reservation of the
    // declared length shows here even before a byte of it is written.
    let before = vm_mib(pid, "VmSize");
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(file.socket_addr()).await.unwrap();
        s.write_u32((64 << 20) - 1).await.unwrap();
        s.write_all(&[0x80; 1000]).await.unwrap();
        held.push(s);
    }
    let mut refused = 0;
    for s in &mut held {
        let len = tokio::time::timeout(Duration::from_secs(10), s.read_u32()).await.unwrap().unwrap();
        let mut buf = vec![0; len as usize];
        s.read_exact(&mut buf).await.unwrap();
        match decode::<HelloReply>(&buf).unwrap() {
            HelloReply::Rejected { error } if error.contains("over the limit of 16384 bytes") => refused += 1,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(refused, 100);
    let after = vm_mib(pid, "VmSize");
    assert!(after < before + 1024, "scheduler grew from {before} to {after} MiB");
    still_serving(&file).await;
}

/// Connections that never say Hello are capped; past the cap new ones are
/// closed at once, and once they go, everyone is served again.
#[tokio::test]
async fn silent_connections_are_capped() {
    let cluster = Cluster::scheduler_only();
    let file = SchedulerFile::read(&cluster.file).unwrap();
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(file.socket_addr()).await.unwrap());
    }
    // The last ones were closed by the scheduler without a word.
    let mut closed = 0;
    for s in silent.iter_mut().rev().take(20) {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 20, "connections past the cap are closed");
    drop(silent);
    assert!(wait_until(Duration::from_secs(5), || cluster
        .scheduler
        .log_text()
        .contains("too many connections")));
    // The scheduler notices the drops; a real client gets in again.
    let mut served = false;
    for _ in 0..100 {
        if let Ok((mut c, _)) = Conn::connect(
            file.socket_addr(),
            Role::Client,
            &file.auth(),
            DEFAULT_MAX_FRAME,
            Duration::from_secs(2),
        )
        .await
        {
            c.write(&FromClient::Status).await.unwrap();
            served = matches!(c.read::<ToClient>().await, Ok(ToClient::Status { .. }));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served);
}

/// A client that asks for the same big catch-up thousands of times and
/// never reads is cut off at `scheduler.max_send_queue`; a second watch of a
/// job on one connection is one watch.
#[tokio::test]
async fn a_client_that_does_not_read_is_cut_off() {
    let mut cluster = Cluster::scheduler_with_config(Some("[scheduler]\nmax_send_queue = \"8MiB\"\n"));
    cluster.start_nanny(2, 1);
    let out = cluster.run(&["submit", "--array", "1-20000", "--output", "none", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job: actord::ids::JobId = stdout(&out).parse().unwrap();
    assert!(cluster.run(&["gather", &job.to_string(), "--out", "/dev/null"]).status.success());
    let file = SchedulerFile::read(&cluster.file).unwrap();
    let pid = cluster.scheduler.pid();
    let before = vm_mib(pid, "VmRSS");

    let conn = client_conn(&file).await;
    let (mut sink, mut stream) = conn.into_split();
    let watch = encode(&FromClient::Watch { job }).unwrap();
    for _ in 0..3000 {
        if sink.feed(watch.clone()).await.is_err() {
            break;
        }
    }
    let _ = sink.flush().await;
    assert!(
        wait_until(Duration::from_secs(30), || cluster.scheduler.log_text().contains("send queue full")),
        "{}",
        cluster.scheduler.log_text()
    );
    let after = vm_mib(pid, "VmRSS");
    assert!(after < before + 256, "scheduler grew from {before} to {after} MiB");
    // Reading now: whatever was written, then the end of the connection.
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while next_frame(&mut stream).await.is_ok() {}
    })
    .await;
    assert!(drained.is_ok(), "the connection was closed:\n{}", cluster.scheduler.log_text());
    still_serving(&file).await;

    // A running job watched twice on one connection streams its outcomes once.
    let out = cluster.run(&["submit", "--fn", "sleep", "--args", "300"]);
    let job: actord::ids::JobId = stdout(&out).parse().unwrap();
    let mut conn = client_conn(&file).await;
    conn.write(&FromClient::Watch { job }).await.unwrap();
    conn.write(&FromClient::Watch { job }).await.unwrap();
    let mut outcomes = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), conn.read::<ToClient>()).await.unwrap().unwrap() {
            ToClient::Outcomes { outcomes: o, .. } => outcomes += o.len(),
            ToClient::JobDone { .. } => break,
            _ => {}
        }
    }
    assert_eq!(outcomes, 1);
}

/// One wrong byte after the handshake (`08 'Status'`: variant 8 by index,
/// then trailing bytes) was read as `Shutdown`.
#[tokio::test]
async fn a_variant_by_index_does_not_stop_the_scheduler() {
    let cluster = Cluster::scheduler_only();
    let file = SchedulerFile::read(&cluster.file).unwrap();
    for frame in [&b"\x08Status"[..], &b"\x08"[..], &b"\x81\x08\xc0"[..]] {
        let (mut sink, mut stream) = client_conn(&file).await.into_split();
        sink.send(bytes::Bytes::copy_from_slice(frame)).await.unwrap();
        let reply = next_frame(&mut stream).await.unwrap();
        match decode::<ToClient>(&reply).unwrap() {
            ToClient::Error { message, .. } => assert!(message.contains("bad client message"), "{message}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    still_serving(&file).await;
    assert!(!cluster.scheduler.log_text().contains("shutdown requested"));
}

/// A Hello whose fields hold newlines and escape sequences is logged escaped.
#[tokio::test]
async fn peer_strings_are_escaped_in_the_log() {
    let cluster = Cluster::scheduler_with(None, &["--no-tls"]);
    let file = SchedulerFile::read(&cluster.file).unwrap();
    #[derive(serde::Serialize)]
    struct RawHello<'a> {
        magic: &'a str,
        protocol: u32,
        role: &'a str,
        #[serde(with = "serde_bytes")]
        nonce: &'a [u8],
        host: &'a str,
        pid: u32,
    }
    let evil = "Client\n2099-01-01T00:00:00Z  INFO actord: \x1b[31mall workers lost";
    let hello = RawHello { magic: MAGIC, protocol: 2, role: evil, nonce: &[7; 32], host: evil, pid: 1 };
    let mut s = TcpStream::connect(file.socket_addr()).await.unwrap();
    let payload = rmp_serde::to_vec_named(&hello).unwrap();
    s.write_u32(payload.len() as u32).await.unwrap();
    s.write_all(&payload).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    assert!(wait_until(Duration::from_secs(5), || cluster
        .scheduler
        .log_text()
        .contains("connection refused")));
    let log = cluster.scheduler.log_text();
    assert!(!log.contains('\x1b'), "raw escape in the log:\n{log}");
    assert!(!log.lines().any(|l| l.starts_with("2099-01-01")), "injected line:\n{log}");
    // A well-formed Hello with such a host is accepted, and logged escaped too.
    let good = Hello {
        magic: MAGIC.into(),
        protocol: PROTOCOL_VERSION,
        role: Role::Client,
        nonce: vec![9; 32],
        host: evil.into(),
        pid: 1,
        user: evil.into(),
        epoch: 0,
    };
    let auth = file.auth();
    let conn = handshake::open_client(file.socket_addr(), &auth).await.unwrap();
    let (mut conn, reply) = handshake::authenticate(conn, good, &auth, DEFAULT_MAX_FRAME).await.unwrap();
    assert!(matches!(reply, HelloReply::Welcome { .. }));
    conn.write(&FromClient::Forget { job: actord::ids::JobId(uuid::Uuid::new_v4()) }).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || cluster.scheduler.log_text().contains("admin request")));
    let log = cluster.scheduler.log_text();
    assert!(!log.contains('\x1b') && !log.lines().any(|l| l.starts_with("2099-01-01")), "{log}");
}

/// A closed stdout (`actord ctl tasks JOB | head -3`) ends a command quietly.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let cluster = Cluster::start(1, 1);
    let out = cluster.run(&["submit", "--array", "1-5000", "--output", "none", "--", "true"]);
    let job = stdout(&out);
    assert!(cluster.run(&["gather", &job, "--out", "/dev/null"]).status.success());
    let mut child = cluster
        .command(&["ctl", "tasks", &job])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
    for _ in 0..3 {
        let mut l = String::new();
        lines.read_line(&mut l).unwrap();
        assert!(!l.is_empty());
    }
    drop(lines);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(0), "{err}");
}

/// Numbers a user or peer supplies are checked: no overflow, no giant
/// allocation, a clear usage error.
#[test]
fn impossible_numbers_are_clear_errors() {
    let cluster = Cluster::scheduler_only();
    for (args, want) in [
        (&["submit", "--array", "0-18446744073709551615", "--", "true"][..], "at most 1000000"),
        (&["submit", "--array", "1-99999999999999999999", "--", "true"][..], "expected a range"),
    ] {
        let out = cluster.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
}

/// A scheduler file left by a scheduler that stopped itself says why, and
/// clients print it at once instead of waiting for an answer.
#[test]
fn a_stopped_scheduler_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler.json");
    let file = SchedulerFile {
        address: "tcp://127.0.0.1:9".into(),
        instance: uuid::Uuid::new_v4(),
        epoch: 3,
        pid: 999_999,
        host: actord::util::hostname(),
        journal: None,
        dashboard: None,
        started: "2026-12-01T00:00:00Z".into(),
        version: "0".into(),
        secret: "00".into(),
        mode: Default::default(),
        tls_fingerprint: None,
        stopped: Some("journal flush failed: No space left on device (os error 28)".into()),
        results_dir: None,
    };
    file.write_atomic(&path).unwrap();
    let start = std::time::Instant::now();
    let out = actord()
        .args(["ctl", "--scheduler-file"])
        .arg(&path)
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("has stopped: journal flush failed: No space left"), "{}", stderr(&out));
    assert!(start.elapsed() < Duration::from_secs(20), "answered at once, not after the client timeout");
}

/// A journal that can no longer be written (here: a file-size limit, as a
/// full disk would) stops the scheduler; its scheduler file says why, and a
/// new client prints that at once instead of waiting for an answer.
#[test]
fn a_journal_that_cannot_be_written_stops_the_scheduler_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scheduler.json");
    let config = dir.path().join("actord.toml");
    std::fs::write(&config, "[scheduler]\nflush_timeout = \"2s\"\n").unwrap();
    let mut cmd = std::process::Command::new("bash");
    // 2 MiB per file at most; SIGXFSZ ignored so that writes fail instead.
    cmd.arg("-c")
        .arg("ulimit -f 2048; trap '' XFSZ; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_actord"))
        .arg("--config")
        .arg(&config)
        .args(["scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file"])
        .arg(&file)
        .arg("--journal")
        .arg(dir.path().join("journal"))
        .env("ACTORD_LOG", "info");
    let mut scheduler = Proc::spawn("scheduler", cmd, dir.path());
    assert!(wait_until(Duration::from_secs(20), || file.exists()), "{}", scheduler.log_text());
    let inputs = dir.path().join("big.jsonl");
    std::fs::write(&inputs, format!("\"{}\"\n", "x".repeat(3 << 20))).unwrap();
    let client = |args: &[&str]| {
        actord()
            .arg(args[0])
            .arg("--scheduler-file")
            .arg(&file)
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = client(&["map", "noop", "--inputs", inputs.to_str().unwrap()]);
    assert!(!out.status.success(), "the job was never durable, so never acknowledged");
    let status = scheduler
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the scheduler stops:\n{}", scheduler.log_text()));
    assert_eq!(status.code(), Some(1), "{}", scheduler.log_text());
    let sf = SchedulerFile::read(&file).unwrap();
    let why = sf.stopped.expect("the scheduler file says why it stopped");
    assert!(why.contains("journal"), "{why}");
    let start = std::time::Instant::now();
    let out = client(&["ctl", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("has stopped") && stderr(&out).contains("journal"), "{}", stderr(&out));
    assert!(start.elapsed() < Duration::from_secs(20));
}
