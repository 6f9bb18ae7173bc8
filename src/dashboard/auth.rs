//! Who may use the status page: its token (derived from the cluster
//! secret), and the rule — read-only requests from loopback to a page on
//! loopback need none; everything else, and every action, needs it.

use super::page::PageInfo;
use axum::http::{HeaderMap, Method};
use std::net::SocketAddr;

/// Whether two byte strings are equal, in time that depends on their
/// lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries: `Authorization: Bearer T`, else `?token=T`.
fn presented<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    bearer.or_else(|| {
        query?
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// Why a request is refused (401), or `Ok` to serve it.
pub fn check(
    info: &PageInfo,
    peer: SocketAddr,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), &'static str> {
    let Some(want) = &info.token else { return Ok(()) }; // an --insecure scheduler
    let read_only = method == Method::GET || method == Method::HEAD;
    match presented(headers, query) {
        Some(t) if same(t.as_bytes(), want.as_bytes()) => Ok(()),
        Some(_) => Err("wrong token: use the link `actord ctl dashboard` prints"),
        None if read_only && info.loopback && peer.ip().is_loopback() => Ok(()),
        None if read_only => {
            Err("this page needs its token here: use the link `actord ctl dashboard` prints")
        }
        None => Err("actions need the page's token: use the link `actord ctl dashboard` prints"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::page::token;

    fn info(loopback: bool) -> PageInfo {
        PageInfo {
            token: Some(token("s3cret")),
            loopback,
            url: "http://127.0.0.1:1/".into(),
            scheduler: "tcp://127.0.0.1:2".into(),
            security: "tls".into(),
        }
    }

    #[test]
    fn the_token_is_the_secrets_hmac_and_the_rules_hold() {
        let t = token("s3cret");
        assert_eq!(t.len(), 64);
        assert_ne!(t, token("other"));
        let (local, remote): (SocketAddr, SocketAddr) =
            ("127.0.0.1:9".parse().unwrap(), "10.0.0.1:9".parse().unwrap());
        let none = HeaderMap::new();
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", format!("Bearer {t}").parse().unwrap());
        let q = format!("a=1&token={t}");
        let (get, post) = (Method::GET, Method::POST);
        assert!(check(&info(true), local, &get, &none, None).is_ok(), "loopback reads");
        assert!(check(&info(true), remote, &get, &none, None).is_err(), "not from elsewhere");
        assert!(check(&info(false), local, &get, &none, None).is_err(), "not on a wide bind");
        assert!(check(&info(true), local, &post, &none, None).is_err(), "actions always need it");
        assert!(check(&info(true), local, &post, &bearer, None).is_ok());
        assert!(check(&info(false), remote, &get, &none, Some(&q)).is_ok());
        assert!(
            check(&info(true), local, &get, &none, Some("token=00")).is_err(),
            "a wrong token is refused"
        );
        let open = PageInfo { token: None, ..info(false) };
        assert!(check(&open, remote, &post, &none, None).is_ok(), "an insecure scheduler has none");
    }
}
