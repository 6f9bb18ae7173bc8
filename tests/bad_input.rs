//! Bad input never takes the scheduler down: each bad peer gets a clear
//! error, and the scheduler keeps serving everyone else.

mod common;

use actord::protocol::conn::{decode, encode};
use actord::protocol::{Conn, Hello, HelloReply, Role, ToClient, DEFAULT_MAX_FRAME, MAGIC, PROTOCOL_VERSION};
use actord::schedfile::SchedulerFile;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn hello(protocol: u32) -> Hello {
    Hello {
        magic: MAGIC.into(),
        protocol,
        role: Role::Client,
        nonce: vec![7; 32],
        host: "test".into(),
        pid: std::process::id(),
        user: "test".into(),
        epoch: 0,
    }
}

/// Reads one length-prefixed frame from a raw socket.
async fn read_raw_frame(s: &mut TcpStream) -> Vec<u8> {
    let len = tokio::time::timeout(Duration::from_secs(10), s.read_u32()).await.unwrap().unwrap();
    let mut buf = vec![0; len as usize];
    s.read_exact(&mut buf).await.unwrap();
    buf
}

async fn send_raw_frame(s: &mut TcpStream, payload: &[u8]) {
    s.write_u32(payload.len() as u32).await.unwrap();
    s.write_all(payload).await.unwrap();
}

async fn rejected(s: &mut TcpStream) -> String {
    match decode::<HelloReply>(&read_raw_frame(s).await).unwrap() {
        HelloReply::Rejected { error } => error,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_oversized_wrong_version_and_wrong_secret_are_refused() {
    // Plaintext, so that raw frames reach the handshake (tests/security.rs has TLS).
    let cluster = Cluster::scheduler_with(None, &["--no-tls"]);
    let file = SchedulerFile::read(&cluster.file).unwrap();
    let addr = file.socket_addr().to_string();

    // A garbage frame instead of Hello.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    send_raw_frame(&mut s, b"\xde\xad\xbe\xef not msgpack").await;
    let err = rejected(&mut s).await;
    assert!(err.contains("expected a Hello frame"), "{err}");

    // An oversized frame: only its length header is ever sent.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_u32(u32::MAX - 1).await.unwrap();
    let err = rejected(&mut s).await;
    assert!(err.contains("over the limit"), "{err}");

    // Another protocol version.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    send_raw_frame(&mut s, &encode(&hello(PROTOCOL_VERSION + 98)).unwrap()).await;
    let err = rejected(&mut s).await;
    assert!(err.contains(&format!("protocol version {}", PROTOCOL_VERSION + 98)), "{err}");

    // A wrong secret: the scheduler's proof does not check out, so the peer hangs up.
    let wrong = actord::security::Credentials { secret: "0123456789abcdef".into(), ..file.auth() };
    let err = Conn::connect(&addr, Role::Client, &wrong, DEFAULT_MAX_FRAME, Duration::from_secs(5))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("could not prove it knows"), "{err}");

    // Garbage after a good handshake: an error message, then that connection closes.
    let (conn, _) =
        Conn::connect(&addr, Role::Client, &file.auth(), DEFAULT_MAX_FRAME, Duration::from_secs(5))
            .await
            .unwrap();
    let (mut sink, mut stream) = conn.into_split();
    use futures::SinkExt;
    sink.send(bytes::Bytes::from_static(b"\x93\x01\x02\x03")).await.unwrap();
    let reply = actord::protocol::conn::next_frame(&mut stream).await.unwrap();
    match decode::<ToClient>(&reply).unwrap() {
        ToClient::Error { message, .. } => {
            assert!(message.contains("bad client message"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(actord::protocol::conn::next_frame(&mut stream).await.is_err(), "connection closed");

    still_serving(&file).await;
    assert!(cluster.scheduler.log_text().contains("connection refused"));
}

#[test]
fn unknown_functions_and_bad_arguments_fail_the_task_not_the_worker() {
    // Submitted before any worker registered, an unknown function is taken
    // (refused at submit once workers are there: see newcomer_core.rs).
    let mut cluster = Cluster::scheduler_only();
    let out = cluster.run(&["submit", "--fn", "no_such_fn", "--args", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    cluster.start_nanny(1, 1);
    let pids = cluster.worker_pids();
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = doc["failures"][0]["error"].as_str().unwrap();
    assert!(err.contains("unknown function \"no_such_fn\"") && err.contains("inc"), "{err}");

    let out = cluster.run(&["submit", "--fn", "inc", "--args", "\"seven\""]);
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = doc["failures"][0]["error"].as_str().unwrap();
    assert!(err.starts_with("inc: bad arguments (got \"seven\")"), "{err}");

    // The same worker process is still there and still works.
    assert_eq!(cluster.worker_pids(), pids);
    let out = cluster.run(&["submit", "--fn", "inc", "--args", "41"]);
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["results"], serde_json::json!([42]));
}

#[test]
fn bad_command_lines_are_usage_errors_that_change_nothing() {
    let cluster = Cluster::scheduler_only();
    let cases: &[(&[&str], &str)] = &[
        (&["gather", "not-a-uuid"], "is not a job id"),
        (&["submit"], "nothing to run"),
        (&["submit", "--array", "5-1", "--", "true"], "--array"),
        (&["submit", "--fn", "inc", "--args", "{oops"], "--args is not JSON"),
        (&["map", "inc", "--inputs", "/nonexistent/in.jsonl"], "cannot read"),
    ];
    for (args, want) in cases {
        let out = cluster.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    // An unknown job: a clear runtime error.
    let out = cluster.run(&["gather", &uuid::Uuid::new_v4().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no job"), "{}", stderr(&out));
}
