//! `actord ctl` and the console: one function per admin command over an
//! open connection, answering with a table (see `table`), a sentence or JSON.

use super::common::{failed, parse_job_id, usage};
use super::{table, CliError, CtlCommand};
use crate::client::Client;
use crate::protocol::FromClient;
use std::process::ExitCode;

/// Every state `ctl tasks --state` may name (as the scheduler reports them).
pub const TASK_STATES: &[&str] =
    &["waiting", "ready", "unschedulable", "retrying", "queued", "running", "finished", "failed", "canceled"];

type Answer = Result<ExitCode, CliError>;

/// `--json` output of the ctl commands.
fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    outln!("{}", serde_json::to_string_pretty(value).map_err(failed)?);
    Ok(())
}

/// A `Done` answer on stdout: the sentence, or `{"ok": true, "message": …}`.
fn print_done(message: &str, json: bool) -> Answer {
    if json {
        print_json(&serde_json::json!({ "ok": true, "message": message }))?;
    } else {
        outln!("{message}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `--json`: the value as JSON; otherwise its rendering.
fn show<T: serde::Serialize + ?Sized>(value: &T, json: bool, render: impl FnOnce(&T) -> String) -> Answer {
    if json {
        print_json(value)?;
    } else {
        outln!("{}", render(value));
    }
    Ok(ExitCode::SUCCESS)
}

/// One admin command over an open connection (`actord ctl …` and the console).
pub async fn run_ctl(client: &mut Client, command: CtlCommand, json: bool) -> Answer {
    use CtlCommand as C;
    match command {
        C::Status => status(client, json).await,
        C::Workers => show(&client.workers().await?, json, |w| table::workers(w)),
        C::Nannies => show(&client.nannies().await?, json, |n| table::nannies(n)),
        C::Jobs => show(&client.jobs().await?, json, |j| table::jobs(j)),
        C::Job { job } => show(&client.job(parse_job_id(Some(&job))?).await?, json, table::job),
        C::Tasks { job, state } => tasks(client, &job, state, json).await,
        C::Explain { job, key } => explain(client, &job, &key, json).await,
        C::Cancel { job, keys } => print_done(&client.cancel(parse_job_id(Some(&job))?, keys).await?, json),
        C::Retry { job } => admin(client, FromClient::Retry { job: parse_job_id(Some(&job))? }, json).await,
        C::Forget { job } => print_done(&client.forget(parse_job_id(Some(&job))?).await?, json),
        C::RestartWorker { worker } => {
            print_done(&client.restart_worker(parse_worker_id(&worker)?).await?, json)
        }
        C::RetireWorker { worker } => {
            admin(client, FromClient::RetireWorker { worker: parse_worker_id(&worker)? }, json).await
        }
        C::Journal => show(&client.journal().await?, json, table::journal),
        C::Dashboard => dashboard(&client.file, json),
        C::Shutdown { drain: false, keep_workers } => shutdown(client, keep_workers, json).await,
        C::Shutdown { drain: true, keep_workers } => drain(client, keep_workers, json).await,
        C::LogLevel { level } => admin(client, FromClient::LogLevel { level }, json).await,
    }
}

/// An admin request answered with `Done`.
async fn admin(client: &mut Client, request: FromClient, json: bool) -> Answer {
    print_done(&client.admin(request).await?, json)
}

/// `ctl status`: the scheduler's view plus where the scheduler file says it is.
async fn status(client: &mut Client, json: bool) -> Answer {
    let s = client.status().await?;
    let f = &client.file;
    if !json {
        outln!("{}", table::status(f, &s));
        return Ok(ExitCode::SUCCESS);
    }
    let mut v = serde_json::to_value(&s).map_err(failed)?;
    v["address"] = f.address.clone().into();
    v["pid"] = f.pid.into();
    v["host"] = f.host.clone().into();
    v["started"] = f.started.clone().into();
    v["security"] = f.mode.name().into();
    v["dashboard"] = f.dashboard.clone().into();
    print_json(&v)?;
    Ok(ExitCode::SUCCESS)
}

/// `ctl dashboard`: the page's link with its token, from the scheduler file.
fn dashboard(f: &crate::schedfile::SchedulerFile, json: bool) -> Answer {
    let Some(url) = &f.dashboard else {
        return Err(failed(
            "this scheduler serves no status page (started with --no-dashboard, or its address was taken)",
        ));
    };
    let token = (f.mode != crate::security::Mode::Insecure).then(|| crate::dashboard::page::token(&f.secret));
    let link = crate::dashboard::page::link(url, token.as_deref());
    match json {
        true => print_json(&serde_json::json!({ "url": url, "link": link, "token": token }))?,
        false => outln!("{link}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `ctl tasks JOB [--state S]`: the state is checked before anything is asked.
async fn tasks(client: &mut Client, job: &str, state: Option<String>, json: bool) -> Answer {
    let id = parse_job_id(Some(job))?;
    if let Some(s) = state.as_deref().filter(|s| !TASK_STATES.contains(s)) {
        return Err(usage(format!("--state {s:?}: expected one of {}", TASK_STATES.join(", "))));
    }
    let mut tasks = client.tasks(id).await?;
    if let Some(s) = &state {
        tasks.retain(|t| &t.state == s);
    }
    show(&tasks, json, |t| table::tasks(t))
}

/// `ctl explain JOB KEY`: the scheduler's sentence as it is.
async fn explain(client: &mut Client, job: &str, key: &str, json: bool) -> Answer {
    let message = client.explain(parse_job_id(Some(job))?, key).await?;
    print_done(&message, json)
}

/// `ctl shutdown [--keep-workers]`.
async fn shutdown(client: &mut Client, keep_workers: bool, json: bool) -> Answer {
    let request = match keep_workers {
        true => FromClient::StopKeepingWorkers { drain: false },
        false => FromClient::Shutdown,
    };
    print_done(&client.shutdown_with(request).await?, json)
}

/// `ctl shutdown --drain`: says what is still running until the scheduler goes away.
async fn drain(client: &mut Client, keep_workers: bool, json: bool) -> Answer {
    let request = match keep_workers {
        true => FromClient::StopKeepingWorkers { drain: true },
        false => FromClient::DrainAndShutdown,
    };
    let message = client.admin(request).await?;
    eprintln!("{message}");
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

/// `w3` or `3`.
fn parse_worker_id(s: &str) -> Result<crate::ids::WorkerId, CliError> {
    s.trim()
        .trim_start_matches('w')
        .parse()
        .map(crate::ids::WorkerId)
        .map_err(|_| usage(format!("{s:?} is not a worker id (e.g. w3, see `actord ctl workers`)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_read_with_or_without_their_w() {
        assert_eq!(parse_worker_id("w3").unwrap(), crate::ids::WorkerId(3));
        assert_eq!(parse_worker_id(" 12 ").unwrap(), crate::ids::WorkerId(12));
        let e = parse_worker_id("x3").unwrap_err().to_string();
        assert!(e.contains("\"x3\" is not a worker id"), "{e}");
    }
}
