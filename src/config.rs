//! Configuration: the defaults in config/actord.toml (compiled in), with an
//! optional user file on top; command-line flags override both.

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

pub const DEFAULTS: &str = include_str!("../config/actord.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub scheduler: SchedulerConfig,
    pub worker: WorkerConfig,
    pub nanny: NannyConfig,
    pub client: ClientConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    pub host: String,
    pub port: u16,
    pub max_frame: usize,
    #[serde(deserialize_with = "de_size")]
    pub max_send_queue: u64,
    pub max_connections: usize,
    pub prefetch_target_us: u64,
    pub max_prefetch_per_slot: u32,
    pub max_worker_kills: u32,
    #[serde(deserialize_with = "de_duration")]
    pub heartbeat_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub reclaim_grace: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub commit_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub flush_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub retry_backoff: Duration,
    #[serde(deserialize_with = "de_optional_duration")]
    pub retention: Option<Duration>,
    /// The status page's address; "none" serves none.
    pub dashboard: String,
    /// The results store; empty: `<journal dir>/results`.
    #[serde(default)]
    pub results_dir: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub threads: u32,
    #[serde(deserialize_with = "de_duration")]
    pub death_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub heartbeat: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    #[serde(deserialize_with = "de_size")]
    pub max_result: u64,
    #[serde(deserialize_with = "de_size")]
    pub inline_result: u64,
    #[serde(deserialize_with = "de_size")]
    pub result_cache: u64,
    pub result_sync: String,
    #[serde(deserialize_with = "de_size")]
    pub max_error: u64,
    pub python: String,
    pub preload: Vec<String>,
    #[serde(deserialize_with = "de_duration")]
    pub walltime_margin: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NannyConfig {
    pub max_restarts: u32,
    #[serde(deserialize_with = "de_duration")]
    pub restart_window: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub min_uptime: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub backoff_base: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub backoff_max: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub memory_poll: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub stop_grace: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => crate::util::parse_duration(&s.to_string()),
        Raw::Text(t) => crate::util::parse_duration(&t),
    }
    .map_err(serde::de::Error::custom)
}

/// A size such as "8MiB", or a plain number of bytes.
fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(b) => Ok(b),
        Raw::Text(t) => crate::util::parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// A duration, or "none".
fn de_optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    crate::util::parse_duration(&s).map(Some).map_err(serde::de::Error::custom)
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

impl Config {
    /// The defaults, with `file` (if any) read on top.
    pub fn load(file: Option<&Path>) -> Result<Config, String> {
        let mut value: toml::Value =
            toml::from_str(DEFAULTS).map_err(|e| format!("built-in defaults: {e}"))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
            let user: toml::Value =
                toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
            merge(&mut value, user);
        }
        value.try_into().map_err(|e| {
            format!("config{}: {e}", file.map(|p| format!(" {}", p.display())).unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_a_user_file_overrides_some_keys() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.worker.threads, 0, "as many as the CPUs given");
        assert_eq!(c.worker.death_timeout, Duration::from_secs(60));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[worker]\nthreads = 4\nheartbeat = \"250ms\"\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!((c.worker.threads, c.worker.heartbeat), (4, Duration::from_millis(250)));
        assert_eq!(c.scheduler.max_worker_kills, 3);
        std::fs::write(&p, "[worker]\nthreds = 4\n").unwrap();
        assert!(Config::load(Some(&p)).unwrap_err().contains("threds"));
    }
}
