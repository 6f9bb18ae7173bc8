//! What a worker or nanny learns from its batch system: how many CPUs it
//! was given (`SLURM_CPUS_PER_TASK`, `SLURM_CPUS_ON_NODE`) and when its
//! allocation ends (`SLURM_JOB_END_TIME`, else `squeue`), and when to drain.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long `squeue` may take to say when the job ends.
const SQUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// The CPUs this process may use, and where that figure came from:
/// `$SLURM_CPUS_PER_TASK`, else `$SLURM_CPUS_ON_NODE`, else this machine's.
pub fn cpus(env: impl Fn(&str) -> Option<String>) -> (u32, &'static str) {
    for var in ["SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"] {
        if let Some(n) = env(var).as_deref().and_then(leading_count) {
            return (n, var);
        }
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(u32::MAX as usize) as u32);
    (n, "this machine's CPU count")
}

/// `"4"` → 4; Slurm's `"2(x3)"` forms → 2; nothing positive → `None`.
fn leading_count(v: &str) -> Option<u32> {
    let digits: String = v.trim().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|n| *n > 0)
}

/// Where the end of an allocation was learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndFrom {
    Flag,
    JobEndTime,
    Squeue,
}

impl std::fmt::Display for EndFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndFrom::Flag => "--walltime-end/--lifetime",
            EndFrom::JobEndTime => "$SLURM_JOB_END_TIME",
            EndFrom::Squeue => "squeue",
        })
    }
}

/// `--walltime-end`: seconds since the Unix epoch, as `$SLURM_JOB_END_TIME`
/// gives them (a fraction allowed).
pub fn parse_epoch(v: &str) -> Result<SystemTime, String> {
    let s: f64 =
        v.trim().parse().ok().filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e11).ok_or_else(|| {
            format!("{v:?} is not a time in seconds since the Unix epoch (e.g. 1767225600)")
        })?;
    Ok(UNIX_EPOCH + Duration::from_secs_f64(s))
}

/// The allocation's end: the flag's, else `$SLURM_JOB_END_TIME`, else what
/// `squeue` says of `$SLURM_JOB_ID`; `None` when there is none to know.
pub fn allocation_end(
    flag: Option<SystemTime>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<(SystemTime, EndFrom)> {
    if let Some(end) = flag {
        return Some((end, EndFrom::Flag));
    }
    if let Some(end) = env("SLURM_JOB_END_TIME").and_then(|v| parse_epoch(&v).ok()) {
        return Some((end, EndFrom::JobEndTime));
    }
    let job = env("SLURM_JOB_ID")?;
    match squeue_end(&job) {
        Ok(end) => end.map(|e| (e, EndFrom::Squeue)),
        Err(e) => {
            tracing::warn!(job = ?job, error = %e, "cannot learn when the allocation ends; assuming it does not");
            None
        }
    }
}

/// `squeue -h -j JOB -o %e`, with the times in epoch seconds; `None` for a
/// job without an end ("Unknown", "NONE").
fn squeue_end(job: &str) -> Result<Option<SystemTime>, String> {
    if job.is_empty() || !job.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("$SLURM_JOB_ID {job:?} is not a job id"));
    }
    let mut child = Command::new("squeue")
        .args(["-h", "-j", job, "-o", "%e"])
        .env("SLURM_TIME_FORMAT", "%s")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run squeue: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < SQUEUE_TIMEOUT => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("squeue did not answer within {SQUEUE_TIMEOUT:?}"));
            }
        }
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        let _ = o.by_ref().take(4096).read_to_string(&mut out);
    }
    let line = out.lines().next().unwrap_or("").trim();
    match line {
        "" => Err(format!("squeue knows no job {job}")),
        "Unknown" | "NONE" | "N/A" => Ok(None),
        t => parse_epoch(t).map(Some).map_err(|e| format!("squeue said {e}")),
    }
}

/// How long before the end a worker drains: `explicit` if given, else
/// `default` but at most a tenth of the time left at `now`.
pub fn drain_margin(
    end: SystemTime,
    now: SystemTime,
    explicit: Option<Duration>,
    default: Duration,
) -> Duration {
    explicit.unwrap_or_else(|| default.min(end.duration_since(now).unwrap_or_default() / 10))
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn cpus_come_from_slurm_first() {
        let both = [("SLURM_CPUS_PER_TASK", "4"), ("SLURM_CPUS_ON_NODE", "32")];
        assert_eq!(cpus(env(&both)), (4, "SLURM_CPUS_PER_TASK"));
        assert_eq!(cpus(env(&both[1..])), (32, "SLURM_CPUS_ON_NODE"));
        assert_eq!(cpus(env(&[("SLURM_CPUS_ON_NODE", "2(x3)")])), (2, "SLURM_CPUS_ON_NODE"));
        let machine = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(cpus(env(&[("SLURM_CPUS_PER_TASK", "0"), ("SLURM_CPUS_ON_NODE", "x")])).0, machine);
        assert_eq!(cpus(env(&[])), (machine, "this machine's CPU count"));
    }

    #[test]
    fn the_end_comes_from_the_flag_then_slurm() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        let vars = [("SLURM_JOB_END_TIME", "1767225600")];
        assert_eq!(allocation_end(Some(at(5)), env(&vars)), Some((at(5), EndFrom::Flag)));
        assert_eq!(allocation_end(None, env(&vars)), Some((at(1767225600), EndFrom::JobEndTime)));
        assert_eq!(allocation_end(None, env(&[])), None, "no Slurm job: no end");
        assert!(parse_epoch("soon").unwrap_err().contains("seconds since the Unix epoch"));
        assert!(parse_epoch("-3").is_err() && parse_epoch("inf").is_err());
        assert_eq!(parse_epoch("10.5").unwrap(), UNIX_EPOCH + Duration::from_millis(10_500));
    }

    #[test]
    fn the_margin_is_at_most_a_tenth_of_what_is_left() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let end = now + Duration::from_secs(20);
        let d30 = Duration::from_secs(30);
        assert_eq!(drain_margin(end, now, None, d30), Duration::from_secs(2));
        assert_eq!(drain_margin(now + Duration::from_secs(3600), now, None, d30), d30);
        assert_eq!(drain_margin(end, now, Some(Duration::from_secs(5)), d30), Duration::from_secs(5));
        assert_eq!(drain_margin(now, end, None, d30), Duration::ZERO, "past the end");
    }

    #[test]
    fn a_bad_job_id_is_not_passed_to_squeue() {
        assert!(squeue_end("1; rm -rf /").unwrap_err().contains("is not a job id"));
    }
}
