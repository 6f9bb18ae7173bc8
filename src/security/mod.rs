//! Security: the mode a scheduler runs in (TLS, plaintext with
//! authentication, or neither), its secret and certificate, what a peer
//! needs from the scheduler file to connect, and owner-only permissions.

pub mod handshake;
pub mod perms;
pub mod tls;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How connections to a scheduler are protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// TLS with a pinned certificate, and the challenge–response handshake.
    #[default]
    Tls,
    /// Plaintext, still authenticated (`--no-tls`).
    NoTls,
    /// Neither encrypted nor authenticated (`--insecure`).
    Insecure,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tls => "tls",
            Mode::NoTls => "no-tls",
            Mode::Insecure => "insecure",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(
        "{what} {path} is accessible by others (mode {mode:04o}): it holds the cluster's secret; \
         run `chmod 600 {path}`"
    )]
    Exposed { what: String, path: PathBuf, mode: u32 },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Usage(String),
}

/// The scheduler's security flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// TLS certificate (PEM, the first one is pinned by peers) instead of the
    /// self-signed one kept in the journal directory.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Plaintext connections, still authenticated by the secret.
    #[arg(long, conflicts_with_all = ["insecure", "tls_cert"])]
    pub no_tls: bool,
    /// Neither TLS nor authentication: anyone who reaches the port may run
    /// anything on the workers. For a private test network only.
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure: bool,
    /// Secret shared by several schedulers (hex or any text, mode 0600)
    /// [default: `secret` in the journal directory, made at first start].
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

impl SecurityArgs {
    pub fn mode(&self) -> Mode {
        match (self.no_tls, self.insecure) {
            (_, true) => Mode::Insecure,
            (true, _) => Mode::NoTls,
            _ => Mode::Tls,
        }
    }
}

/// One line for `ctl status`: how this scheduler's connections are protected.
pub fn describe(mode: Mode, fingerprint: Option<&str>) -> String {
    match mode {
        Mode::Tls => format!("TLS (certificate sha256 {}), authenticated", fingerprint.unwrap_or("?")),
        Mode::NoTls => {
            "plaintext (--no-tls), authenticated: task arguments and results cross in clear".into()
        }
        Mode::Insecure => "WARNING: --insecure: neither encrypted nor authenticated; anyone who can reach \
                           the port can run commands on every worker"
            .into(),
    }
}

/// What the scheduler proves and checks with.
#[derive(Clone)]
pub struct ServerSecurity {
    pub mode: Mode,
    /// Empty in `Mode::Insecure`.
    pub secret: String,
    pub tls: Option<tls::ServerTls>,
}

impl ServerSecurity {
    /// Secret and certificate for `args`: kept in the journal directory
    /// `journal` (made private) so they survive restarts; in memory only
    /// without one.
    pub fn prepare(args: &SecurityArgs, journal: Option<&Path>) -> Result<ServerSecurity, SecurityError> {
        let mode = args.mode();
        if let Some(dir) = journal {
            perms::make_private_tree(dir)?;
        }
        let secret = match (mode, &args.secret_file, journal) {
            (Mode::Insecure, _, _) => String::new(),
            (_, Some(file), _) => read_secret(file)?,
            (_, None, Some(dir)) => kept_secret(&dir.join("secret"))?,
            (_, None, None) => random_hex(32)?,
        };
        let tls = match (mode, &args.tls_cert, &args.tls_key, journal) {
            (Mode::Tls, Some(cert), Some(key), _) => Some(tls::ServerTls::load(cert, key)?),
            (Mode::Tls, _, _, Some(dir)) => Some(tls::ServerTls::self_signed_in(dir)?),
            (Mode::Tls, _, _, None) => Some(tls::ServerTls::ephemeral()?),
            _ => None,
        };
        if mode == Mode::Insecure {
            tracing::warn!(
                "running --insecure: connections are neither encrypted nor authenticated; \
                 anyone who can reach this port can run commands on every worker"
            );
        }
        Ok(ServerSecurity { mode, secret, tls })
    }

    /// The certificate fingerprint peers pin ("" without TLS).
    pub fn fingerprint(&self) -> &str {
        self.tls.as_ref().map_or("", |t| t.fingerprint.as_str())
    }
}

/// What a peer needs to connect: from the scheduler file.
#[derive(Clone, Default)]
pub struct Credentials {
    pub mode: Mode,
    pub secret: String,
    /// Hex SHA-256 of the scheduler's certificate (`Mode::Tls`).
    pub fingerprint: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself, so no log line can carry it.
        f.debug_struct("Credentials")
            .field("mode", &self.mode)
            .field("secret", &if self.secret.is_empty() { "none" } else { "<redacted>" })
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// Bytes a secret file may hold at most.
const MAX_SECRET_FILE: u64 = 4096;

/// A secret-bearing file given by the user: private, and not empty.
fn read_secret(path: &Path) -> Result<String, SecurityError> {
    perms::check_private_file(path, "secret file")?;
    let bytes = perms::read_bounded(path, MAX_SECRET_FILE)?;
    let text = String::from_utf8(bytes).map_err(|_| SecurityError::File {
        path: path.to_path_buf(),
        message: "is not text: a secret is printable characters (e.g. `openssl rand -hex 32`)".into(),
    })?;
    let secret = text.trim().to_string();
    if secret.len() < 16 {
        return Err(SecurityError::File {
            path: path.to_path_buf(),
            message: "a secret needs at least 16 characters (e.g. `openssl rand -hex 32`)".into(),
        });
    }
    Ok(secret)
}

/// The secret kept at `path`, made (mode 0600) if there is none yet.
fn kept_secret(path: &Path) -> Result<String, SecurityError> {
    if path.exists() {
        return read_secret(path);
    }
    let secret = random_hex(32)?;
    perms::write_private(path, secret.as_bytes())?;
    Ok(secret)
}

/// `n` random bytes from the system's generator, hex.
pub fn random_hex(n: usize) -> Result<String, SecurityError> {
    let bytes = handshake::random_bytes(n).map_err(SecurityError::Tls)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_survives_restarts_and_a_shared_one_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("journal");
        let a = ServerSecurity::prepare(&SecurityArgs::default(), Some(&j)).unwrap();
        let b = ServerSecurity::prepare(&SecurityArgs::default(), Some(&j)).unwrap();
        assert_eq!(a.secret, b.secret);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(perms::mode(&j.join("secret")).unwrap(), 0o600);
        assert_eq!(perms::mode(&j).unwrap(), 0o700);

        let shared = dir.path().join("shared");
        perms::write_private(&shared, b"0123456789abcdef0123\n").unwrap();
        let args = SecurityArgs { secret_file: Some(shared.clone()), no_tls: true, ..Default::default() };
        let c = ServerSecurity::prepare(&args, Some(&j)).unwrap();
        assert_eq!(c.secret, "0123456789abcdef0123");
        assert!(c.tls.is_none());
        std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let err = ServerSecurity::prepare(&args, Some(&j)).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");

        let insecure = SecurityArgs { insecure: true, ..Default::default() };
        let d = ServerSecurity::prepare(&insecure, None).unwrap();
        assert!(d.secret.is_empty() && d.tls.is_none());
    }
}
