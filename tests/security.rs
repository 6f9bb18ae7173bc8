//! Security end to end: every kind of unwelcome peer is refused with a clear
//! error and a log line while a job carries on; nothing secret crosses the
//! wire; a second local user can read nothing actord wrote.

mod common;

use actord::protocol::{
    Conn, Hello, HelloProof, HelloReply, Role, DEFAULT_MAX_FRAME, MAGIC, PROTOCOL_VERSION,
};
use actord::schedfile::SchedulerFile;
use actord::security::{handshake, Credentials, Mode};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn hello(nonce: Vec<u8>) -> Hello {
    Hello {
        magic: MAGIC.into(),
        protocol: PROTOCOL_VERSION,
        role: Role::Client,
        nonce,
        host: "test".into(),
        pid: std::process::id(),
        user: "test".into(),
        epoch: 0,
    }
}

async fn connect(addr: &str, auth: &Credentials) -> Result<Conn, String> {
    Conn::connect(addr, Role::Client, auth, DEFAULT_MAX_FRAME, Duration::from_secs(15))
        .await
        .map(|(c, _)| c)
        .map_err(|e| e.to_string())
}

/// Waits until the scheduler's log has `n` lines containing `what`.
fn log_has(cluster: &Cluster, what: &str, n: usize) {
    let ok = wait_until(Duration::from_secs(15), || cluster.scheduler.log_text().matches(what).count() >= n);
    assert!(ok, "expected {n} log lines with {what:?}:\n{}", cluster.scheduler.log_text());
}

/// A TLS server with a certificate of its own, standing where the scheduler should be.
async fn impostor() -> (String, tokio::task::JoinHandle<Option<String>>) {
    let tls = actord::security::tls::ServerTls::ephemeral().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.ok()?;
        tls.acceptor.accept(tcp).await.err().map(|e| e.to_string())
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwelcome_peers_are_refused_while_a_job_runs() {
    let cluster = Cluster::start(1, 2);
    let file = SchedulerFile::read(&cluster.file).unwrap();
    assert_eq!(file.mode, Mode::Tls);
    let addr = file.socket_addr().to_string();
    let job = stdout(&cluster.run(&[
        "submit",
        "--array",
        "1-40",
        "--",
        "sh",
        "-c",
        "sleep 0.4; echo $ACTORD_TASK",
    ]));

    // No handshake: TLS opens, then silence; refused after the deadline.
    let silent = {
        let auth = file.auth();
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut conn = handshake::open_client(&addr, &auth).await.unwrap();
            let t0 = Instant::now();
            let reply = tokio::time::timeout(Duration::from_secs(20), conn.read::<HelloReply>()).await;
            (t0.elapsed(), format!("{reply:?}"))
        })
    };

    // A wrong secret: the scheduler's proof fails, and the peer hangs up.
    let wrong = Credentials { secret: "0123456789abcdef0123".into(), ..file.auth() };
    let err = connect(&addr, &wrong).await.err().unwrap();
    assert!(err.contains("could not prove it knows the scheduler file's secret"), "{err}");
    log_has(&cluster, "hung up instead of proving it knows the secret", 1);

    // A peer without the secret that sends a made-up proof.
    let mut conn = handshake::open_client(&addr, &file.auth()).await.unwrap();
    conn.write(&hello(vec![1; 32])).await.unwrap();
    assert!(matches!(conn.read::<HelloReply>().await.unwrap(), HelloReply::Challenge { .. }));
    conn.write(&HelloProof { proof: vec![0; 32] }).await.unwrap();
    match conn.read::<HelloReply>().await.unwrap() {
        HelloReply::Rejected { error } => assert!(error.contains("authentication failed"), "{error}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    log_has(&cluster, "authentication failed", 1);

    // A replay: the Hello and proof of an earlier, successful handshake.
    let (nonce, proof) = legit_handshake(&addr, &file).await;
    let mut conn = handshake::open_client(&addr, &file.auth()).await.unwrap();
    conn.write(&hello(nonce)).await.unwrap();
    let HelloReply::Challenge { .. } = conn.read::<HelloReply>().await.unwrap() else {
        panic!("no challenge")
    };
    conn.write(&HelloProof { proof }).await.unwrap();
    match conn.read::<HelloReply>().await.unwrap() {
        HelloReply::Rejected { error } => assert!(error.contains("replayed handshake"), "{error}"),
        other => panic!("a replayed handshake was accepted: {other:?}"),
    }
    log_has(&cluster, "authentication failed", 2);

    // A man in the middle with another certificate: the client stops at TLS.
    let (fake, seen) = impostor().await;
    let err = connect(&fake, &file.auth()).await.err().unwrap();
    assert!(err.contains("not the one the scheduler file pins"), "{err}");
    assert!(seen.await.unwrap().is_some(), "the impostor's TLS handshake should fail");
    let mitm = SchedulerFile { address: format!("tcp://{fake}"), ..file.clone() };
    let (fake2, _seen2) = impostor().await;
    let mitm = SchedulerFile { address: format!("tcp://{fake2}"), ..mitm };
    let mitm_path = cluster.path("mitm.json");
    mitm.write_atomic(&mitm_path).unwrap();
    let out = actord().args(["ctl", "--scheduler-file"]).arg(&mitm_path).arg("status").output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not the one the scheduler file pins"), "{}", stderr(&out));

    // A plaintext client against this TLS scheduler.
    let plain = Credentials { mode: Mode::NoTls, ..file.auth() };
    let err = connect(&addr, &plain).await.err().unwrap();
    assert!(err.contains("this scheduler requires TLS"), "{err}");
    log_has(&cluster, "requires TLS", 1);

    // A scheduler file that others may read: refused at once, naming the fix.
    let exposed = cluster.path("exposed.json");
    std::fs::copy(&cluster.file, &exposed).unwrap();
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let t0 = Instant::now();
    let out = actord().args(["ctl", "--scheduler-file"]).arg(&exposed).arg("status").output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success() && t0.elapsed() < Duration::from_secs(10), "{err}");
    assert!(err.contains("accessible by others (mode 0644)") && err.contains("chmod 600"), "{err}");
    assert!(err.contains(&exposed.display().to_string()), "{err}");

    let (waited, reply) = silent.await.unwrap();
    assert!(reply.contains("no handshake within 10s"), "{reply}");
    assert!(waited >= Duration::from_secs(8), "refused after {waited:?}");
    log_has(&cluster, "no handshake within 10s", 1);

    // The job ran all along, and never noticed.
    let status = cluster.run(&["ctl", "status"]);
    assert!(stdout(&status).contains("TLS (certificate sha256"), "{}", stdout(&status));
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["results"].as_array().map(|r| r.len()), Some(40));
    still_serving(&file).await;
}

/// A successful handshake done by hand: the Hello's nonce and the proof sent.
async fn legit_handshake(addr: &str, file: &SchedulerFile) -> (Vec<u8>, Vec<u8>) {
    let auth = file.auth();
    let mut conn = handshake::open_client(addr, &auth).await.unwrap();
    let nonce = vec![5u8; 32];
    conn.write(&hello(nonce.clone())).await.unwrap();
    let HelloReply::Challenge { nonce: theirs, .. } = conn.read::<HelloReply>().await.unwrap() else {
        panic!("no challenge")
    };
    let fp = file.tls_fingerprint.as_deref().unwrap_or("");
    let proof = handshake::peer_proof(&file.secret, Role::Client, &nonce, &theirs, fp);
    conn.write(&HelloProof { proof: proof.clone() }).await.unwrap();
    assert!(matches!(conn.read::<HelloReply>().await.unwrap(), HelloReply::Welcome { .. }));
    (nonce, proof)
}

/// Bytes recorded by a relay, shared with its copy tasks.
type Log = Arc<Mutex<Vec<u8>>>;

/// A TCP relay to `target` that records every byte, both ways, and each
/// connection's client-to-scheduler bytes apart.
struct Recorder {
    addr: String,
    all: Log,
    upstream: Arc<Mutex<Vec<Log>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(target: String) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let all = Arc::new(Mutex::new(Vec::new()));
        let upstream = Arc::new(Mutex::new(Vec::new()));
        let (all2, up2) = (all.clone(), upstream.clone());
        let task = tokio::spawn(async move {
            while let Ok((inner, _)) = l.accept().await {
                let Ok(outer) = TcpStream::connect(&target).await else { continue };
                let mine = Arc::new(Mutex::new(Vec::new()));
                up2.lock().unwrap().push(mine.clone());
                let all = all2.clone();
                tokio::spawn(async move {
                    let (ir, iw) = tap(inner, all.clone(), Some(mine));
                    let (or, ow) = tap(outer, all, None);
                    tokio::join!(copy(ir, ow), copy(or, iw));
                });
            }
        });
        Recorder { addr, all, upstream, task }
    }
}

type Tapped = (tokio::net::tcp::OwnedReadHalf, Log, Option<Log>);

fn tap(s: TcpStream, all: Log, mine: Option<Log>) -> (Tapped, tokio::net::tcp::OwnedWriteHalf) {
    let (r, w) = s.into_split();
    ((r, all, mine), w)
}

async fn copy(from: Tapped, mut to: tokio::net::tcp::OwnedWriteHalf) {
    let (mut r, all, mine) = from;
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        all.lock().unwrap().extend_from_slice(&buf[..n]);
        if let Some(m) = &mine {
            m.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// Runs a job with a known argument through a recording relay (client and
/// worker both), and returns what crossed it plus the secret.
async fn record_a_job(flags: &[&str]) -> (Cluster, Recorder, String) {
    let cluster = Cluster::scheduler_with(None, flags);
    let file = SchedulerFile::read(&cluster.file).unwrap();
    let rec = Recorder::start(file.socket_addr().to_string()).await;
    let proxied = cluster.path("proxied.json");
    SchedulerFile { address: format!("tcp://{}", rec.addr), ..file.clone() }.write_atomic(&proxied).unwrap();
    let mut cmd = actord();
    cmd.args(["nanny", "--workers", "1", "--threads", "1", "--scheduler-file"]).arg(&proxied);
    let nanny = Proc::spawn("nanny-proxied", cmd, cluster.dir.path());
    let via = |args: &[&str]| {
        let mut c = actord();
        c.arg(args[0]).arg("--scheduler-file").arg(&proxied).args(&args[1..]);
        c.stdin(std::process::Stdio::null()).output().unwrap()
    };
    let out = tokio::task::block_in_place(|| via(&["wait", "--workers", "1", "--timeout", "30s"]));
    assert!(out.status.success(), "{}\n{}", stderr(&out), nanny.log_text());
    let out = tokio::task::block_in_place(|| via(&["submit", "--", "echo", "known-argument-8d1f2c"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tokio::task::block_in_place(|| via(&["gather", &stdout(&out)]));
    assert!(out.status.success(), "{}", stderr(&out));
    drop(nanny);
    (cluster, rec, file.secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_secret_nor_task_arguments_cross_the_wire_in_clear() {
    let (_cluster, rec, secret) = record_a_job(&[]).await;
    let wire = rec.all.lock().unwrap().clone();
    assert!(wire.len() > 2000, "the relay saw the traffic ({} bytes)", wire.len());
    assert!(!contains(&wire, secret.as_bytes()) && !contains(&wire, &unhex(&secret)), "the secret crossed");
    assert!(!contains(&wire, b"known-argument-8d1f2c"), "a task argument crossed in clear with TLS on");
    rec.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_the_secret_still_never_crosses_and_a_replay_fails() {
    let (cluster, rec, secret) = record_a_job(&["--no-tls"]).await;
    let wire = rec.all.lock().unwrap().clone();
    // The capture works: in plaintext the argument is there to see ...
    assert!(contains(&wire, b"known-argument-8d1f2c"), "the relay did not see the job");
    // ... but the secret is not.
    assert!(!contains(&wire, secret.as_bytes()) && !contains(&wire, &unhex(&secret)), "the secret crossed");
    // Replaying a client's captured bytes (Hello, proof, requests) gets nothing.
    let captured = rec.upstream.lock().unwrap().last().unwrap().lock().unwrap().clone();
    assert!(captured.len() > 100);
    let file = SchedulerFile::read(&cluster.file).unwrap();
    let mut s = TcpStream::connect(file.socket_addr()).await.unwrap();
    s.write_all(&captured).await.unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut back)).await;
    let frames = split_frames(&back);
    assert!(matches!(frames.first(), Some(HelloReply::Challenge { .. })), "{frames:?}");
    match frames.get(1) {
        Some(HelloReply::Rejected { error }) => assert!(error.contains("authentication failed"), "{error}"),
        other => panic!("the replay was not refused: {other:?}"),
    }
    assert_eq!(frames.len(), 2, "nothing served after the refusal");
    log_has(&cluster, "authentication failed", 1);
    // A TLS client is told at once that this scheduler runs without TLS.
    let tls = Credentials { mode: Mode::Tls, fingerprint: Some("00".repeat(32)), ..file.auth() };
    let err = connect(file.socket_addr(), &tls).await.err().unwrap();
    assert!(err.contains("the scheduler refused TLS"), "{err}");
    log_has(&cluster, "the peer speaks TLS", 1);
    rec.task.abort();
}

fn split_frames(mut b: &[u8]) -> Vec<HelloReply> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let Some(frame) = b.get(4..4 + n) else { break };
        match actord::protocol::conn::decode::<HelloReply>(frame) {
            Ok(m) => out.push(m),
            Err(_) => break,
        }
        b = &b[4 + n..];
    }
    out
}

/// A throwaway local user, removed on drop (also when the test fails).
struct ProbeUser(String);

impl ProbeUser {
    fn create() -> ProbeUser {
        let name = format!("actordprobe{}", std::process::id() % 100_000);
        let _ = std::process::Command::new("userdel").arg(&name).output();
        let out = std::process::Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd: {}", String::from_utf8_lossy(&out.stderr));
        ProbeUser(name)
    }

    /// Whether this user can read `path` (a file's bytes, or a directory's listing).
    fn can_read(&self, path: &Path) -> bool {
        let what = if path.is_dir() { "ls" } else { "cat" };
        let out = std::process::Command::new("runuser")
            .args(["-u", &self.0, "--", what])
            .arg(path)
            .output()
            .unwrap();
        out.status.success()
    }
}

impl Drop for ProbeUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel").arg(&self.0).output();
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn a_second_local_user_can_read_nothing_actord_wrote() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: creating a second local user needs root");
        return;
    }
    let cluster = Cluster::start(1, 1);
    // Open the test's own directory, so only actord's modes protect its files.
    std::fs::set_permissions(cluster.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out =
        cluster.run(&["submit", "--array", "1-3", "--", "sh", "-c", "echo private-output-$ACTORD_TASK"]);
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let user = ProbeUser::create();
    let control = cluster.path("public.txt");
    std::fs::write(&control, b"anyone").unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        user.can_read(&control),
        "the probe user cannot read even a public file: the test proves nothing"
    );

    let mut written = vec![cluster.file.clone()];
    walk(&cluster.path("journal"), &mut written);
    walk(&cluster.path("actord-jobs"), &mut written);
    let outputs = written.iter().filter(|p| p.extension().is_some_and(|e| e == "out")).count();
    assert!(outputs >= 3, "task outputs: {written:?}");
    assert!(
        written.iter().any(|p| p.ends_with("secret")) && written.iter().any(|p| p.ends_with("tls-key.pem"))
    );
    for p in &written {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:04o}", p.display());
        assert!(!user.can_read(p), "{} can read {}", user.0, p.display());
    }
}

#[test]
fn insecure_runs_jobs_and_says_so_in_the_log_and_in_status() {
    let mut cluster = Cluster::scheduler_with(None, &["--insecure"]);
    let file = SchedulerFile::read(&cluster.file).unwrap();
    assert_eq!(
        (file.mode, file.secret.as_str(), file.tls_fingerprint.as_deref()),
        (Mode::Insecure, "", None)
    );
    assert!(cluster.scheduler.log_text().contains("running --insecure"));
    cluster.start_nanny(1, 1);
    let out = cluster.run(&["submit", "--fn", "inc", "--args", "41"]);
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = stdout(&cluster.run(&["ctl", "status"]));
    assert!(status.contains("WARNING: --insecure"), "{status}");
}

#[test]
fn a_certificate_of_ones_own_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["node7.example".into()]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let (c, k) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());
    let mut cluster = Cluster::scheduler_with(None, &["--tls-cert", c, "--tls-key", k]);
    let file = SchedulerFile::read(&cluster.file).unwrap();
    assert_eq!(
        file.tls_fingerprint.as_deref(),
        Some(actord::security::tls::fingerprint(cert.der()).as_str())
    );
    assert!(!cluster.path("journal/tls-cert.pem").exists(), "no self-signed one was made");
    cluster.start_nanny(1, 1);
    let out = cluster.run(&["submit", "--fn", "inc", "--args", "1"]);
    assert!(cluster.run(&["gather", &stdout(&out)]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped() {
    let cluster = Cluster::scheduler_with(Some("[scheduler]\nmax_connections = 3\n"), &[]);
    let file = SchedulerFile::read(&cluster.file).unwrap();
    let addr = file.socket_addr().to_string();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&addr, &file.auth()).await.unwrap());
    }
    let err = connect(&addr, &file.auth()).await.err().unwrap();
    assert!(!err.contains("did not answer"), "closed at once, not left waiting: {err}");
    log_has(&cluster, "too many open connections", 1);
    drop(held.pop());
    let ok = {
        let mut ok = false;
        for _ in 0..100 {
            if connect(&addr, &file.auth()).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ok
    };
    assert!(ok, "a connection gets in again once one closes");
}
