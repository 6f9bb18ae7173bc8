//! A client's report of a stored result it found lost: the scheduler reads
//! the file itself, off its event loop, before the task runs again (a
//! client's word alone voids nothing).

use crate::actors::msgs::SchedMsg;
use crate::actors::outbox::Outbox;
use crate::core::{self, Core, Effects};
use crate::ids::{ConnId, TaskId};
use crate::protocol::{StoredResult, ToClient};
use ractor::ActorRef;
use std::path::PathBuf;

/// Files checked at once for clients' reports (each read in 1 MiB pieces).
static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// `StoredLost` from a client: the file is read against the scheduler's
/// own reference before anything changes.
pub(super) fn on_lost(
    myself: &ActorRef<SchedMsg>,
    store: Option<PathBuf>,
    (core, fx): (&mut Core, &mut Outbox),
    conn: ConnId,
    task: TaskId,
    path: String,
) {
    match core::stored_result_of(core, task) {
        Err(message) => fx.to_client(conn, ToClient::Error { job: Some(task.job), message }),
        Ok(Some(r)) if r.path == path => check_lost(myself, store, conn, task, r),
        // Running again already: the client waits for it.
        Ok(_) => fx.to_client(conn, ToClient::StoredRerun { job: task.job, idx: task.idx }),
    }
}

/// The scheduler's own read of a file a client reported lost.
pub(super) fn on_checked(
    core: &mut Core,
    fx: &mut Outbox,
    conn: ConnId,
    task: TaskId,
    path: &str,
    lost: Result<String, String>,
) {
    match lost {
        Ok(why) => core::on_client_stored_lost(core, fx, conn, task, path, &why),
        Err(message) => fx.to_client(conn, ToClient::Error { job: Some(task.job), message }),
    }
}

/// Reads `r` from the store on a blocking thread, then tells the scheduler
/// (`SchedMsg::StoredChecked`) whether it is lost.
fn check_lost(
    myself: &ActorRef<SchedMsg>,
    store: Option<PathBuf>,
    conn: ConnId,
    task: TaskId,
    r: StoredResult,
) {
    let me = myself.clone();
    tokio::spawn(async move {
        let path = r.path.clone();
        let lost = match store {
            None => Err("this scheduler has no results store".to_string()),
            Some(dir) if crate::results_store::task_of(&r.path) == Some(task) => {
                // One check at a time, streamed: reports cannot pile up reads.
                let _turn = CHECKS.acquire().await;
                match tokio::task::spawn_blocking(move || crate::results_store::verify_file(&dir, &r)).await {
                    Ok(Ok(())) => Err(format!(
                        "the stored result of {task} is intact in the scheduler's store ({path}): read it through the scheduler"
                    )),
                    Ok(Err(e)) if e.is_lost() => Ok(e.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("reading {path:?} failed: {e}")),
                }
            }
            Some(_) => Err(format!("{path:?} is not a stored result of task {task}")),
        };
        let _ = me.cast(SchedMsg::StoredChecked { conn, task, path, lost });
    });
}
