//! What the scheduler needs of its status page before it runs: the
//! options, binding the socket, the token, and what the page says of its
//! scheduler (no dependency on the actors).

/// Where the page listens when no flag says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8787";

/// `--dashboard ADDR` / `--no-dashboard` / the configuration's.
#[derive(Clone, Debug)]
pub struct DashboardOptions {
    pub addr: String,
    /// Given on the command line (or in a configuration file): a busy
    /// address is then an error; the default one busy is only a warning.
    pub explicit: bool,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot serve the status page on {addr}: {source} (give another --dashboard ADDR, or --no-dashboard)"
)]
pub struct BindError {
    pub addr: String,
    pub source: std::io::Error,
}

/// Binds the page's socket: `Ok(None)` when the default address is taken
/// (warned: a second scheduler on a node is common), an error when an
/// address asked for cannot be had.
pub fn bind(opts: &DashboardOptions) -> Result<Option<std::net::TcpListener>, BindError> {
    let err = |source| BindError { addr: opts.addr.clone(), source };
    let bound = std::net::TcpListener::bind(&opts.addr).and_then(|l| l.set_nonblocking(true).map(|()| l));
    match bound {
        Ok(l) => Ok(Some(l)),
        Err(e) if !opts.explicit && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(
                addr = %opts.addr,
                "the status page's default address is in use (another scheduler on this node?); running \
                 without a status page (give --dashboard ADDR for one)"
            );
            Ok(None)
        }
        Err(e) => Err(err(e)),
    }
}

/// What the page says of its scheduler, and who may see it.
#[derive(Clone, Debug)]
pub struct PageInfo {
    /// `None`: an `--insecure` scheduler, which has no secret: no token.
    pub token: Option<String>,
    /// The page listens on loopback only: read-only requests from loopback
    /// need no token.
    pub loopback: bool,
    /// The page's address as others reach it, `http://HOST:PORT/`.
    pub url: String,
    /// The scheduler's address (`tcp://…`) and mode, for the system view.
    pub scheduler: String,
    pub security: String,
}

impl PageInfo {
    /// The page's link with its token (what `actord ctl dashboard` prints).
    pub fn link(&self) -> String {
        link(&self.url, self.token.as_deref())
    }
}

/// `url` with `?token=` appended when there is one.
pub fn link(url: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("{url}?token={t}"),
        None => url.to_string(),
    }
}

/// The page's token: hex HMAC-SHA256(secret, "actord dashboard").
pub fn token(secret: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, b"actord dashboard").as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_address_taken_only_warns_another_one_fails() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let default = DashboardOptions { addr: addr.clone(), explicit: false };
        assert!(bind(&default).unwrap().is_none());
        let asked = DashboardOptions { addr: addr.clone(), explicit: true };
        let e = bind(&asked).unwrap_err().to_string();
        assert!(e.starts_with(&format!("cannot serve the status page on {addr}: ")), "{e}");
        let bad = DashboardOptions { addr: "not an address".into(), explicit: false };
        assert!(bind(&bad).is_err(), "only a busy default is let go");
        let free = DashboardOptions { addr: "127.0.0.1:0".into(), explicit: true };
        assert!(bind(&free).unwrap().is_some());
    }
}
