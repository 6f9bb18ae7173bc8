//! `actord ctl` and the console: one admin command over an open
//! connection, printed as a table, a sentence (stdout) or JSON.

use super::commands::{failed, parse_job_id, usage};
use super::{CliError, CtlCommand};
use crate::client::Client;
use crate::protocol::FromClient;
use std::process::ExitCode;

/// Every state `ctl tasks --state` may name (as the scheduler reports them).
pub const TASK_STATES: &[&str] =
    &["waiting", "ready", "unschedulable", "retrying", "queued", "running", "finished", "failed", "canceled"];

/// `--json` output of the ctl commands.
fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    outln!("{}", serde_json::to_string_pretty(value).map_err(failed)?);
    Ok(())
}

/// A `Done` answer on stdout: the sentence, or `{"ok": true, "message": …}`.
fn print_done(message: &str, json: bool) -> Result<ExitCode, CliError> {
    if json {
        print_json(&serde_json::json!({ "ok": true, "message": message }))?;
    } else {
        outln!("{message}");
    }
    Ok(ExitCode::SUCCESS)
}

fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms ago"),
        1000..=119_999 => format!("{:.1} s ago", ms as f64 / 1e3),
        _ => format!("{} min ago", ms / 60_000),
    }
}

/// `--json`: the value as JSON; otherwise what `table` prints of it.
fn show<T: serde::Serialize>(value: T, json: bool, table: impl FnOnce(T)) -> Result<ExitCode, CliError> {
    if json {
        print_json(&value)?;
    } else {
        table(value);
    }
    Ok(ExitCode::SUCCESS)
}

/// One admin command over an open connection (`actord ctl …` and the console).
pub async fn run_ctl(client: &mut Client, command: CtlCommand, json: bool) -> Result<ExitCode, CliError> {
    use crate::util::format_size;
    match command {
        CtlCommand::Workers => {
            let workers = client.workers().await?;
            show(workers, json, |workers| {
                outln!(
                    "{:<11} {:<20} {:>8} {:>6} {:>8} {:>7} {:>12} {:<12} {:>10}  {:<9} RESOURCES",
                    "ID",
                    "HOST",
                    "PID",
                    "SLOTS",
                    "RUNNING",
                    "QUEUED",
                    "NANNY:SLOT",
                    "HEARD",
                    "RSS",
                    "STATE"
                );
                for w in workers {
                    let nanny =
                        w.nanny.map(|n| format!("{}:{}", n.pid, n.slot)).unwrap_or_else(|| "-".into());
                    let rss = if w.rss_kib > 0 { format_size(w.rss_kib * 1024) } else { "-".into() };
                    let state = if w.draining { "draining" } else { "active" };
                    let resources: Vec<String> =
                        w.resources.iter().map(|(k, n)| format!("{k}={n}")).collect();
                    outln!(
                        "{:<11} {:<20} {:>8} {:>6} {:>8} {:>7} {:>12} {:<12} {:>10}  {:<9} {}",
                        w.id.to_string(),
                        w.host,
                        w.pid,
                        w.slots,
                        w.running,
                        w.queued,
                        nanny,
                        ago(w.last_heard_ms),
                        rss,
                        state,
                        if resources.is_empty() { "-".into() } else { resources.join(",") }
                    );
                }
            })
        }
        CtlCommand::Nannies => {
            let nannies = client.nannies().await?;
            show(nannies, json, |nannies| {
                outln!("{:<6} {:<20} {:>8} {:>5} {:>9}  STATE", "NANNY", "HOST", "PID", "SLOT", "RESTARTS");
                for n in nannies {
                    for s in &n.slots {
                        outln!(
                            "{:<6} {:<20} {:>8} {:>5} {:>9}  {}",
                            n.id,
                            n.host,
                            n.pid,
                            s.slot,
                            s.restarts,
                            describe_slot(&s.state)
                        );
                    }
                }
            })
        }
        CtlCommand::Status => {
            let s = client.status().await?;
            let f = &client.file;
            if json {
                let mut v = serde_json::to_value(&s).map_err(failed)?;
                v["address"] = f.address.clone().into();
                v["pid"] = f.pid.into();
                v["host"] = f.host.clone().into();
                v["started"] = f.started.clone().into();
                v["security"] = f.mode.name().into();
                print_json(&v)?;
                return Ok(ExitCode::SUCCESS);
            }
            let uptime = crate::util::format_duration(std::time::Duration::from_secs(s.uptime_s));
            outln!("scheduler  {} (pid {} on {}, up {uptime})", f.address, f.pid, f.host);
            outln!("epoch      {}", s.epoch);
            outln!("security   {}", crate::security::describe(f.mode, f.tls_fingerprint.as_deref()));
            match &s.journal_path {
                Some(p) => outln!("journal    {p} ({})", format_size(s.journal_bytes)),
                None => outln!("journal    none (results in memory)"),
            }
            outln!("workers    {} ({} slots), {} nannies", s.workers, s.slots, s.nannies);
            outln!("jobs       {} ({} done)", s.jobs, s.jobs_done);
            outln!(
                "tasks      {} finished, {} failed, {} running, {} queued on workers, {} waiting for one (of {})",
                s.tasks_finished,
                s.tasks_failed,
                s.tasks_running,
                s.tasks_prefetched,
                s.tasks_queued,
                s.tasks
            );
            outln!("throughput {:.1} tasks/s (last 10 s)", s.tasks_per_s);
            if s.draining {
                outln!("state      draining: no new tasks; stops when the running ones finish");
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCommand::Explain { job, key } => {
            let id = parse_job_id(Some(&job))?;
            let message = client.explain(id, &key).await?;
            if !json {
                outln!("{message}");
                return Ok(ExitCode::SUCCESS);
            }
            print_done(&message, json)
        }
        CtlCommand::Shutdown { drain: false, keep_workers } => {
            let request = match keep_workers {
                true => FromClient::StopKeepingWorkers { drain: false },
                false => FromClient::Shutdown,
            };
            print_done(&client.shutdown_with(request).await?, json)
        }
        CtlCommand::Shutdown { drain: true, keep_workers } => {
            let request = match keep_workers {
                true => FromClient::StopKeepingWorkers { drain: true },
                false => FromClient::DrainAndShutdown,
            };
            let message = client.admin(request).await?;
            eprintln!("{message}");
            // Until the scheduler goes away: say what is still running.
            let mut last = None;
            while let Ok(s) = client.status().await {
                let left = s.tasks_running.saturating_add(s.tasks_prefetched);
                if last != Some(left) {
                    eprintln!("{left} tasks still running or queued on workers");
                    last = Some(left);
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            print_done("drained; the scheduler stopped", json)
        }
        CtlCommand::Jobs => {
            let jobs = client.jobs().await?;
            show(jobs, json, |jobs| {
                outln!(
                    "{:<36}  {:<16} {:>8} {:>8} {:>8} {:>8} {:>8}  STATE",
                    "JOB",
                    "NAME",
                    "TASKS",
                    "DONE",
                    "FAILED",
                    "RUNNING",
                    "QUEUED"
                );
                for j in jobs {
                    let state = if j.done_at.is_some() { "done" } else { "active" };
                    outln!(
                        "{:<36}  {:<16} {:>8} {:>8} {:>8} {:>8} {:>8}  {state}",
                        j.id.to_string(),
                        j.name,
                        j.tasks,
                        j.finished,
                        j.failed,
                        j.running,
                        j.queued
                    );
                }
            })
        }
        CtlCommand::Job { job } => {
            let id = parse_job_id(Some(&job))?;
            let d = client.job(id).await?;
            show(d, json, |d| {
                let i = &d.info;
                let submitted = chrono::DateTime::from_timestamp_micros(i.submitted_at as i64)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                let state = if i.done_at.is_some() { "done" } else { "active" };
                outln!("job        {} ({})", i.id, i.name);
                outln!(
                    "state      {state}: {} of {} tasks finished, {} failed",
                    i.finished,
                    i.tasks,
                    i.failed
                );
                let states: Vec<String> = d.states.iter().map(|(k, n)| format!("{k} {n}")).collect();
                outln!("tasks      {}", states.join(", "));
                outln!("submitted  {submitted}");
                let took = if i.done_at.is_some() { "took" } else { "running" };
                outln!("{took:<10} {:.3} s, {:.1} tasks/s", d.elapsed_s, d.tasks_per_s);
                outln!("retries    {} attempts beyond the first", d.retried_attempts);
            })
        }
        CtlCommand::Tasks { job, state } => {
            let id = parse_job_id(Some(&job))?;
            if let Some(s) = state.as_deref().filter(|s| !TASK_STATES.contains(s)) {
                return Err(usage(format!("--state {s:?}: expected one of {}", TASK_STATES.join(", "))));
            }
            let mut tasks = client.tasks(id).await?;
            if let Some(s) = &state {
                tasks.retain(|t| &t.state == s);
            }
            show(tasks, json, |tasks| {
                outln!(
                    "{:>6} {:<16} {:<14} {:>8} {:<6}  ERROR",
                    "TASK",
                    "KEY",
                    "STATE",
                    "ATTEMPTS",
                    "WORKER"
                );
                for t in tasks {
                    let worker = t.worker.map(|w| w.to_string()).unwrap_or_else(|| "-".into());
                    let key = t.key.unwrap_or_else(|| "-".into());
                    let error = t.error.unwrap_or_default();
                    outln!(
                        "{:>6} {:<16} {:<14} {:>8} {:<6}  {error}",
                        t.idx,
                        key,
                        t.state,
                        t.attempts,
                        worker
                    );
                }
            })
        }
        CtlCommand::Cancel { job, keys } => {
            let id = parse_job_id(Some(&job))?;
            print_done(&client.cancel(id, keys).await?, json)
        }
        CtlCommand::Retry { job } => {
            let job = parse_job_id(Some(&job))?;
            print_done(&client.admin(FromClient::Retry { job }).await?, json)
        }
        CtlCommand::Forget { job } => {
            let id = parse_job_id(Some(&job))?;
            print_done(&client.forget(id).await?, json)
        }
        CtlCommand::RestartWorker { worker } => {
            let id = parse_worker_id(&worker)?;
            print_done(&client.restart_worker(id).await?, json)
        }
        CtlCommand::RetireWorker { worker } => {
            let worker = parse_worker_id(&worker)?;
            print_done(&client.admin(FromClient::RetireWorker { worker }).await?, json)
        }
        CtlCommand::Journal => {
            let j = client.journal().await?;
            show(j, json, |j| {
                match &j.path {
                    Some(p) => outln!("path       {p}"),
                    None => outln!("path       none: results are kept in memory (--no-journal)"),
                }
                outln!("size       {}", format_size(j.bytes));
                outln!("records    {} ({} replayed at start-up)", j.records, j.records_replayed);
                outln!("epoch      {}", j.epoch);
                let last = j.last_flush_ms_ago.map(ago).unwrap_or_else(|| "none yet".into());
                outln!("flushes    {}, last {last}", j.flushes);
            })
        }
        CtlCommand::LogLevel { level } => {
            print_done(&client.admin(FromClient::LogLevel { level }).await?, json)
        }
    }
}

fn describe_slot(s: &crate::protocol::SlotState) -> String {
    use crate::protocol::SlotState::*;
    match s {
        Running { pid } => format!("running (pid {pid})"),
        Restarting { in_ms, last_exit } => format!("restarting in {in_ms} ms after: {last_exit}"),
        Failed { reason } => format!("FAILED: {reason}"),
        Retired => "retired".into(),
    }
}

/// `w3` or `3`.
fn parse_worker_id(s: &str) -> Result<crate::ids::WorkerId, CliError> {
    s.trim()
        .trim_start_matches('w')
        .parse()
        .map(crate::ids::WorkerId)
        .map_err(|_| usage(format!("{s:?} is not a worker id (e.g. w3, see `actord ctl workers`)")))
}
