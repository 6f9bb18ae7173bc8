//! Small helpers shared by the binary's commands: paths with `~` and
//! `$VARS`, durations with suffixes, host names, the wall clock in µs.

use std::path::PathBuf;
use std::time::Duration;

type LogReloader = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static LOG_RELOADER: std::sync::OnceLock<LogReloader> = std::sync::OnceLock::new();

/// Installs how this process changes its log filter (once, at start-up).
pub fn set_log_reloader(f: LogReloader) {
    let _ = LOG_RELOADER.set(f);
}

/// Changes this process's log filter (`ctl log-level`): a level such as
/// `debug`, or directives such as `actord=trace,sled=warn`.
pub fn set_log_level(directives: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for d in directives.split(',') {
        let level = d.rsplit('=').next().unwrap_or("").trim().to_ascii_lowercase();
        if !LEVELS.contains(&level.as_str()) {
            return Err(format!(
                "bad log level {directives:?}: expected one of {} or TARGET=LEVEL, comma-separated",
                LEVELS.join(", ")
            ));
        }
    }
    match LOG_RELOADER.get() {
        Some(f) => f(directives),
        None => Err("this process's log filter cannot be changed".into()),
    }
}

/// Resident memory of this process in KiB (0 where /proc is missing).
pub fn rss_kib() -> u64 {
    proc_rss_kib("self")
}

/// Resident memory of a process (`/proc/PID`, or `self`) in KiB; 0 if gone.
pub fn proc_rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

/// The IP addresses of this host's interfaces that are up (`getifaddrs`).
pub fn interface_addrs() -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read, then free once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return found;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & (libc::IFF_UP as u32) == 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and its family says which sockaddr it is.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    std::net::IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    std::net::IpAddr::from(a.sin6_addr.s6_addr)
                }
                _ => continue,
            }
        };
        found.push(ip);
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// Microseconds since the Unix epoch: the `now` the core's handlers get.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Expands a leading `~` and `$VAR` / `${VAR}`; an unset variable is an error
/// that names it (so `$SCRATCH` unset is not silently the empty string).
pub fn expand_path(raw: &str) -> Result<PathBuf, String> {
    let mut s = String::new();
    let mut rest = raw;
    if rest == "~" || rest.starts_with("~/") {
        let home = std::env::var("HOME").map_err(|_| format!("{raw}: HOME is not set"))?;
        s.push_str(&home);
        rest = &rest[1..];
    }
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            s.push(c);
            continue;
        }
        let (name, braced) = if rest[i + 1..].starts_with('{') {
            let end = rest[i + 2..].find('}').ok_or_else(|| format!("{raw}: unclosed ${{ in path"))?;
            (&rest[i + 2..i + 2 + end], true)
        } else {
            let len = rest[i + 1..]
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .unwrap_or(rest.len() - i - 1);
            (&rest[i + 1..i + 1 + len], false)
        };
        if name.is_empty() {
            s.push('$');
            continue;
        }
        let value =
            std::env::var(name).map_err(|_| format!("{raw}: environment variable ${name} is not set"))?;
        s.push_str(&value);
        let skip = name.len() + if braced { 2 } else { 0 };
        for _ in 0..skip {
            chars.next();
        }
    }
    Ok(PathBuf::from(s))
}

/// Parses `30`, `1.5`, `500ms`, `30s`, `2m`, `1h` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30, 500ms, 30s, 2m"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}: must be a non-negative number"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// msgpack → JSON for output files; binary becomes an array of bytes.
pub fn msgpack_to_json(bytes: &[u8]) -> serde_json::Value {
    fn conv(v: rmpv::Value) -> serde_json::Value {
        use rmpv::Value as V;
        use serde_json::Value as J;
        match v {
            V::Nil => J::Null,
            V::Boolean(b) => J::Bool(b),
            V::Integer(i) => i.as_i64().map(J::from).or_else(|| i.as_u64().map(J::from)).unwrap_or(J::Null),
            V::F32(f) => J::from(f as f64),
            V::F64(f) => J::from(f),
            V::String(s) => J::String(s.into_str().unwrap_or_default()),
            V::Binary(b) => J::Array(b.into_iter().map(J::from).collect()),
            V::Array(a) => J::Array(a.into_iter().map(conv).collect()),
            V::Map(m) => J::Object(
                m.into_iter()
                    .map(|(k, v)| (k.as_str().map(String::from).unwrap_or_else(|| k.to_string()), conv(v)))
                    .collect(),
            ),
            V::Ext(_, b) => J::Array(b.into_iter().map(J::from).collect()),
        }
    }
    match rmpv::decode::read_value(&mut &bytes[..]) {
        Ok(v) => conv(v),
        Err(_) => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn paths_expand_home_and_vars() {
        std::env::set_var("ACTORD_TEST_SCRATCH", "/scratch/u");
        let home = std::env::var("HOME").unwrap();
        assert_eq!(expand_path("~/x").unwrap(), PathBuf::from(format!("{home}/x")));
        assert_eq!(expand_path("$ACTORD_TEST_SCRATCH/s.json").unwrap(), PathBuf::from("/scratch/u/s.json"));
        assert_eq!(expand_path("${ACTORD_TEST_SCRATCH}x/a").unwrap(), PathBuf::from("/scratch/ux/a"));
        let err = expand_path("$ACTORD_TEST_UNSET_VAR/a").unwrap_err();
        assert!(err.contains("ACTORD_TEST_UNSET_VAR is not set"), "{err}");
        assert_eq!(expand_path("/plain/path").unwrap(), PathBuf::from("/plain/path"));
    }
}

/// Parses a memory size: `1024`, `500MB` (10^6), `4GiB` (2^30), `2G`,
/// `1.5TB`; units are case-insensitive, decimal without `i`, binary with.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.trim().parse().map_err(|_| format!("invalid size {s:?}: expected e.g. 4GiB, 500MB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => {
            return Err(format!("invalid size {s:?}: unknown unit {other:?} (B, KB, MB, GB, KiB, MiB, GiB)"))
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("invalid size {s:?}: must be at least 1 byte"));
    }
    Ok(bytes as u64)
}

/// Parses `gpus=2,mem=64GiB` (sizes take units, counts are plain numbers).
pub fn parse_resources(s: &str) -> Result<crate::protocol::Resources, String> {
    let mut out = crate::protocol::Resources::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("resource {part:?}: expected NAME=AMOUNT, e.g. gpus=2"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("resource {part:?}: empty name"));
        }
        let v = v.trim();
        let n = match v.parse::<u64>() {
            Ok(n) => n,
            Err(_) => parse_size(v).map_err(|e| format!("resource {k}: {e}"))?,
        };
        out.insert(k.to_string(), n);
    }
    Ok(out)
}

/// A byte count for people: `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("1.5 kib").unwrap(), 1536);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(12), "12 B");
    }
}

/// A duration for people: `42s`, `3m05s`, `2h07m`, `3d04h`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}
