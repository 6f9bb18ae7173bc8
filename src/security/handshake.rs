//! The opening of every connection, both ends: TLS (when on), `Hello`, then
//! a challenge–response in which each side proves it knows the secret with
//! an HMAC-SHA256 over both fresh nonces; the secret never crosses the wire.

use super::tls::{self, Transport, TLS_HANDSHAKE_BYTE};
use super::{Credentials, Mode, ServerSecurity};
use crate::protocol::conn::{Conn, ConnError, HANDSHAKE_MAX_FRAME};
use crate::protocol::{Hello, HelloProof, HelloReply, Role, MAGIC, PROTOCOL_VERSION};
use ring::hmac;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a new connection may take to finish the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of each side's nonce.
pub const NONCE_LEN: usize = 32;
/// What the scheduler's proof covers first: never the same as the peer's,
/// so neither side's proof can be reflected back as the other's.
const SCHEDULER_LABEL: &[u8] = b"actord-v2 scheduler proof";
const PEER_LABEL: &[u8] = b"actord-v2 peer proof";

/// `n` bytes from the system's random generator.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| "the system's random generator failed".to_string())?;
    Ok(buf)
}

fn role_name(role: Role) -> &'static [u8] {
    match role {
        Role::Client => b"Client",
        Role::Worker => b"Worker",
        Role::Nanny => b"Nanny",
    }
}

/// The message a proof signs: who proves, the peer's role, both nonces (32
/// bytes each) and the fingerprint of the certificate this TLS session runs
/// under ("" without TLS).
fn transcript(label: &[u8], role: Role, client: &[u8], server: &[u8], fingerprint: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(label.len() + 80 + fingerprint.len());
    for part in [label, b"\0", role_name(role), b"\0", client, server, fingerprint.as_bytes()] {
        m.extend_from_slice(part);
    }
    m
}

/// The proof a connecting peer sends: HMAC-SHA256 with the secret over the
/// peer's transcript.
pub fn peer_proof(secret: &str, role: Role, client: &[u8], server: &[u8], fingerprint: &str) -> Vec<u8> {
    hmac::sign(&key(secret), &transcript(PEER_LABEL, role, client, server, fingerprint)).as_ref().to_vec()
}

fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

/// The scheduler's end: TLS if on, then `Hello`, the challenge, the proof
/// and `Welcome`, all within `HANDSHAKE_TIMEOUT`. On refusal the peer is
/// told why (where it can read it) and the reason is returned for the log.
pub async fn accept(
    tcp: TcpStream,
    sec: &ServerSecurity,
    epoch: u64,
    instance: uuid::Uuid,
) -> Result<(Conn, Hello), String> {
    let _ = tcp.set_nodelay(true);
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let transport = match tokio::time::timeout_at(deadline, open(tcp, sec)).await {
        Err(_) => return Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
        Ok(r) => r?,
    };
    let mut conn = Conn::over(transport, HANDSHAKE_MAX_FRAME);
    let checked = match tokio::time::timeout_at(deadline, exchange(&mut conn, sec, epoch)).await {
        Err(_) => Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
        Ok(r) => r,
    };
    match checked {
        Ok(hello) => {
            let welcome = HelloReply::Welcome { protocol: PROTOCOL_VERSION, instance, epoch };
            conn.write(&welcome).await.map_err(|e| format!("could not answer the handshake: {e}"))?;
            Ok((conn, hello))
        }
        Err(error) => {
            let reply = HelloReply::Rejected { error: error.clone() };
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.write(&reply)).await;
            Err(error)
        }
    }
}

/// TLS or plain, as this scheduler runs; a peer that speaks the other is
/// refused (a plaintext one is told so in a frame it can read).
async fn open(tcp: TcpStream, sec: &ServerSecurity) -> Result<Transport, String> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await.map_err(|e| format!("connection failed: {e}"))?;
    if n == 0 {
        return Err("closed before the handshake".into());
    }
    let speaks_tls = first[0] == TLS_HANDSHAKE_BYTE;
    match &sec.tls {
        Some(t) if speaks_tls => match t.acceptor.accept(tcp).await {
            Ok(s) => Ok(Transport::Tls(Box::new(tokio_rustls::TlsStream::Server(s)))),
            Err(e) => Err(format!("TLS handshake failed: {e}")),
        },
        Some(_) => {
            let error = "this scheduler requires TLS: the peer connected in plaintext \
                         (its scheduler file is not this scheduler's, or it is an older actord)";
            refuse_plain(tcp, error).await;
            Err(error.into())
        }
        None if speaks_tls => {
            refuse_tls(tcp).await;
            Err(format!(
                "the peer speaks TLS, but this scheduler runs {}: its scheduler file is not this scheduler's",
                if sec.mode == Mode::Insecure { "--insecure" } else { "--no-tls" }
            ))
        }
        None => Ok(Transport::Plain(tcp)),
    }
}

/// Answers a TLS peer of a plaintext scheduler with a fatal TLS alert
/// (`protocol_version`), so that it fails at once instead of retrying.
async fn refuse_tls(mut tcp: TcpStream) {
    const ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70];
    let mut sink = vec![0u8; HANDSHAKE_MAX_FRAME];
    let _ = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut sink)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(&ALERT).await?;
        tcp.shutdown().await
    })
    .await;
}

/// Tells a plaintext peer why it is refused, reading what it sent first so
/// that closing does not reset the connection before it reads the answer.
async fn refuse_plain(mut tcp: TcpStream, error: &str) {
    let Ok(frame) = crate::protocol::conn::encode(&HelloReply::Rejected { error: error.into() }) else {
        return;
    };
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    let mut sink = vec![0u8; HANDSHAKE_MAX_FRAME];
    let _ = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut sink)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(&out).await?;
        tcp.shutdown().await?;
        // Drain (bounded) until the peer closes.
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// `Hello`, then (unless `--insecure`) the challenge and the peer's proof.
async fn exchange(conn: &mut Conn, sec: &ServerSecurity, epoch: u64) -> Result<Hello, String> {
    let hello: Hello = conn.read().await.map_err(|e| format!("expected a Hello frame: {e}"))?;
    if hello.magic != MAGIC {
        return Err(format!("not an actord peer (magic {:?})", hello.magic));
    }
    if hello.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported: this scheduler speaks version {PROTOCOL_VERSION}; use the same actord version on both sides",
            hello.protocol
        ));
    }
    if sec.mode != Mode::Insecure {
        if hello.nonce.len() != NONCE_LEN {
            return Err(format!(
                "authentication failed: the Hello carries a nonce of {} bytes, not {NONCE_LEN}",
                hello.nonce.len()
            ));
        }
        let nonce = random_bytes(NONCE_LEN)?;
        let key = key(&sec.secret);
        let ours = transcript(SCHEDULER_LABEL, hello.role, &hello.nonce, &nonce, sec.fingerprint());
        let proof = hmac::sign(&key, &ours).as_ref().to_vec();
        conn.write(&HelloReply::Challenge { nonce: nonce.clone(), proof })
            .await
            .map_err(|e| format!("could not send the challenge: {e}"))?;
        let theirs: HelloProof = conn.read().await.map_err(|e| match e {
            ConnError::Closed => "the peer hung up instead of proving it knows the secret (it refused this \
                                  scheduler's proof: its scheduler file's secret differs)"
                .to_string(),
            e => format!("expected the peer's proof: {e}"),
        })?;
        let expected = transcript(PEER_LABEL, hello.role, &hello.nonce, &nonce, sec.fingerprint());
        hmac::verify(&key, &expected, &theirs.proof).map_err(|_| {
            "authentication failed: the peer's proof does not match this scheduler's secret \
             (a wrong or old scheduler file, or a replayed handshake)"
                .to_string()
        })?;
    }
    if hello.epoch > epoch {
        return Err(format!(
            "this scheduler (epoch {epoch}) has been replaced by a newer one (epoch {}): read the scheduler file again",
            hello.epoch
        ));
    }
    Ok(hello)
}

/// The connecting end: TLS pinned to the scheduler file's fingerprint (when
/// on), `Hello`, checking the scheduler's proof before sending ours.
pub async fn connect(
    addr: &str,
    role: Role,
    auth: &Credentials,
    epoch: u64,
    max_frame: usize,
) -> Result<(Conn, HelloReply), ConnError> {
    let conn = open_client(addr, auth).await?;
    let hello = Hello {
        magic: MAGIC.into(),
        protocol: PROTOCOL_VERSION,
        role,
        nonce: random_bytes(NONCE_LEN).map_err(ConnError::Rejected)?,
        host: crate::util::hostname(),
        pid: std::process::id(),
        user: std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default(),
        epoch,
    };
    authenticate(conn, hello, auth, max_frame).await
}

/// A connection to `addr` ready for `Hello`: TLS pinned as `auth` says.
pub async fn open_client(addr: &str, auth: &Credentials) -> Result<Conn, ConnError> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let transport = match (auth.mode, auth.fingerprint.as_deref()) {
        (Mode::Tls, Some(fp)) if !fp.is_empty() => tls::connect(tcp, fp).await.map_err(tls_error)?,
        (Mode::Tls, _) => {
            return Err(ConnError::Rejected(
                "the scheduler file asks for TLS but pins no certificate (tls_fingerprint): \
                 restart the scheduler to rewrite it"
                    .into(),
            ))
        }
        _ => Transport::Plain(tcp),
    };
    Ok(Conn::over(transport, HANDSHAKE_MAX_FRAME))
}

/// Sends `hello` on `conn` and answers the challenge.
pub async fn authenticate(
    mut conn: Conn,
    hello: Hello,
    auth: &Credentials,
    max_frame: usize,
) -> Result<(Conn, HelloReply), ConnError> {
    conn.write(&hello).await?;
    let (role, nonce) = (hello.role, hello.nonce);
    let mut reply: HelloReply = conn.read().await?;
    let fingerprint = auth.fingerprint.as_deref().filter(|_| auth.mode == Mode::Tls).unwrap_or("");
    if let HelloReply::Challenge { nonce: theirs, proof } = &reply {
        if auth.secret.is_empty() {
            return Err(ConnError::Rejected(
                "the scheduler asks for authentication, but the scheduler file (insecure) has no secret"
                    .into(),
            ));
        }
        let key = key(&auth.secret);
        let expected = transcript(SCHEDULER_LABEL, role, &nonce, theirs, fingerprint);
        if theirs.len() != NONCE_LEN || hmac::verify(&key, &expected, proof).is_err() {
            return Err(ConnError::Rejected(
                "the scheduler could not prove it knows the scheduler file's secret: the file is stale \
                 or wrong, or this is not the scheduler it names"
                    .into(),
            ));
        }
        let proof = peer_proof(&auth.secret, role, &nonce, theirs, fingerprint);
        conn.write(&HelloProof { proof }).await?;
        reply = conn.read().await?;
    } else if matches!(reply, HelloReply::Welcome { .. }) && auth.mode != Mode::Insecure {
        return Err(ConnError::Rejected(
            "the scheduler accepted the connection without proving it knows the secret (it runs --insecure, \
             or it is not the scheduler the scheduler file names): refusing it"
                .into(),
        ));
    }
    match reply {
        HelloReply::Rejected { error } => Err(ConnError::Rejected(error)),
        HelloReply::Challenge { .. } => Err(ConnError::Decode("a second challenge in one handshake".into())),
        ok => {
            conn.set_max_frame(max_frame);
            Ok((conn, ok))
        }
    }
}

/// A certificate that is not the pinned one, or a scheduler that refuses TLS
/// with an alert, is named as such; other TLS failures (the scheduler is
/// restarting) stay retryable.
fn tls_error(e: std::io::Error) -> ConnError {
    let text = e.to_string();
    let alert = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::AlertReceived(what)) = alert {
        return ConnError::Tls(format!(
            "the scheduler refused TLS ({what:?}): it runs --no-tls or --insecure, \
             so this scheduler file is not its own"
        ));
    }
    if text.contains("not the one the scheduler file pins") {
        ConnError::Tls(text)
    } else {
        ConnError::Io(std::io::Error::new(e.kind(), format!("TLS handshake failed: {text}")))
    }
}

/// The client side of `Conn`: it lives beside the handshake it runs, so
/// `protocol::conn` (the framing) does not depend on `security`.
impl Conn {
    /// Connects and performs the client side of the handshake.
    pub async fn connect(
        addr: &str,
        role: Role,
        auth: &Credentials,
        max_frame: usize,
        timeout: Duration,
    ) -> Result<(Conn, HelloReply), ConnError> {
        Conn::connect_epoch(addr, role, auth, 0, max_frame, timeout).await
    }

    /// `connect`, saying which scheduler epoch the scheduler file named.
    pub async fn connect_epoch(
        addr: &str,
        role: Role,
        auth: &Credentials,
        epoch: u64,
        max_frame: usize,
        timeout: Duration,
    ) -> Result<(Conn, HelloReply), ConnError> {
        let run = connect(addr, role, auth, epoch, max_frame);
        tokio::time::timeout(timeout, run).await.map_err(|_| ConnError::Timeout(timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_differ_by_side_role_nonce_and_certificate() {
        let (c, s) = (vec![1u8; 32], vec![2u8; 32]);
        let base = transcript(PEER_LABEL, Role::Client, &c, &s, "ab");
        assert_ne!(base, transcript(SCHEDULER_LABEL, Role::Client, &c, &s, "ab"));
        assert_ne!(base, transcript(PEER_LABEL, Role::Worker, &c, &s, "ab"));
        assert_ne!(base, transcript(PEER_LABEL, Role::Client, &s, &c, "ab"));
        assert_ne!(base, transcript(PEER_LABEL, Role::Client, &c, &s, "cd"));
        let k = key("secret");
        let tag = hmac::sign(&k, &base);
        assert!(hmac::verify(&k, &base, tag.as_ref()).is_ok());
        assert!(hmac::verify(&key("other"), &base, tag.as_ref()).is_err());
        assert_ne!(random_bytes(32).unwrap(), random_bytes(32).unwrap());
    }
}
