//! Several "hosts" on one machine, as network namespaces: one per host with
//! a veth pair to a bridge that lives in a namespace of its own, one 10.x
//! address each, no end in this machine's namespace and no route out. Torn
//! down (processes killed by pid, namespaces deleted) when dropped.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Namespaces made by this test process so far (for unique names).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// One network namespace standing for a node.
pub struct Host {
    pub ns: String,
    /// Its address on the bridge, e.g. `10.37.201.2`.
    pub addr: String,
}

/// A bridge namespace and the hosts linked to it.
pub struct Net {
    bridge: String,
    pub hosts: Vec<Host>,
}

/// Why this machine cannot make namespaces, if it cannot (the test is then skipped).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need root".into());
    }
    match Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => None,
        _ => Some("no `ip` command (iproute2)".into()),
    }
}

/// Runs `ip ARGS`, panicking with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().expect("ip runs");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A /24 inside 10.0.0.0/8 that differs from run to run.
fn random_prefix() -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    format!("10.{}.{}", 1 + seed % 254, 1 + (seed >> 8) % 254)
}

impl Net {
    /// `hosts` namespaces on one bridge, or `None` (after saying why on
    /// stderr) where this machine cannot make them.
    pub fn new(hosts: usize) -> Option<Net> {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let run = format!("actord-t{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let prefix = random_prefix();
        eprintln!("network {run}: {prefix}.0/24");
        let bridge = format!("{run}-br");
        // Built up step by step: whatever exists is torn down by `drop`.
        let mut net = Net { bridge: bridge.clone(), hosts: Vec::new() };
        ip(&["netns", "add", &bridge]);
        ip(&["-n", &bridge, "link", "set", "lo", "up"]);
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        for i in 0..hosts {
            let ns = format!("{run}-h{i}");
            ip(&["netns", "add", &ns]);
            let addr = format!("{prefix}.{}", i + 1);
            net.hosts.push(Host { ns: ns.clone(), addr: addr.clone() });
            let end = format!("vh{i}");
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &bridge, "link", "add", &end, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["-n", &bridge, "link", "set", &end, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        Some(net)
    }

    /// `program` run inside host `i`'s namespace.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns]).arg(program);
        c
    }

    /// Pids of every process in host `i`'s namespace.
    pub fn pids(&self, i: usize) -> Vec<i32> {
        pids_of(&self.hosts[i].ns)
    }

    /// kill -9 of every process in host `i`'s namespace.
    pub fn kill_all(&self, i: usize) -> Vec<i32> {
        kill_all(&self.hosts[i].ns)
    }

    /// Cuts host `i`'s link: both ends of its veth pair go down.
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.hosts[i].ns, "link", "set", "eth0", "down"]);
        ip(&["-n", &self.bridge, "link", "set", &format!("vh{i}"), "down"]);
    }
}

fn pids_of(ns: &str) -> Vec<i32> {
    let out = Command::new("ip").args(["netns", "pids", ns]).stdin(Stdio::null()).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

fn kill_all(ns: &str) -> Vec<i32> {
    let pids = pids_of(ns);
    for &pid in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    pids
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_all(&h.ns);
        }
        // A process killed a moment ago may still hold its namespace: wait
        // (bounded) until none is left, then delete them all.
        for h in &self.hosts {
            super::wait_until(std::time::Duration::from_secs(5), || pids_of(&h.ns).is_empty());
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).stderr(Stdio::null()).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.bridge]).stderr(Stdio::null()).status();
    }
}
