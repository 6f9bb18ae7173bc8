//! What the `Worker` does with each message of the scheduler.

use super::msg::WorkerMsg;
use super::{stop_child, WorkerState};
use crate::protocol::{Assignment, FromWorker, PyFunction, ToWorker};
use ractor::ActorRef;

impl WorkerState {
    pub(super) fn on_frame(&mut self, myself: &ActorRef<WorkerMsg>, frame: ToWorker) {
        handle(myself, self, frame)
    }
}

fn handle(myself: &ActorRef<WorkerMsg>, st: &mut WorkerState, frame: ToWorker) {
    match frame {
        ToWorker::Registered { worker } => {
            st.worker = worker;
            tracing::info!(worker = %worker, slots = st.opts.threads, "registered with the scheduler");
        }
        ToWorker::Assign { tasks, .. } if st.draining => {
            // Sent before the scheduler saw `Draining`: hand them back too.
            let returned = tasks.iter().map(|t| t.task).collect();
            st.send(FromWorker::Draining { returned });
        }
        ToWorker::Assign { tasks, functions } => assign(st, tasks, functions),
        ToWorker::Ack { batch } => {
            let tasks = st.outbox.acked(batch);
            let mut pins = super::pinned::lock(&st.book.pins);
            if !pins.results.is_empty() {
                for t in tasks {
                    pins.results.remove(&t);
                }
            }
        }
        ToWorker::Steal { tasks } => {
            let tasks = st.book.give_back(&tasks);
            st.send(FromWorker::Released { tasks });
        }
        ToWorker::Cancel { tasks } => {
            let (reports, kill) = st.book.cancel(tasks);
            for r in reports {
                st.report(myself, r);
            }
            for (task, pid) in kill {
                stop_child(myself, task, pid);
            }
        }
        ToWorker::Error { message } => tracing::warn!(message = ?message, "scheduler reports an error"),
        ToWorker::Reregister { reason } => {
            tracing::warn!(reason = ?reason, "registering again as a new worker");
            // Queued tasks went to others; running ones finish and report.
            st.book.drop_queued();
            st.send(st.register());
        }
        ToWorker::Shutdown => {
            tracing::info!("the scheduler shuts down for good; exiting");
            let _ = myself.cast(WorkerMsg::Stop);
            st.send(FromWorker::Goodbye);
            st.online = false;
        }
        ToWorker::Retire => {
            tracing::info!("retired by the scheduler: draining");
            st.start_drain(myself, st.opts.drain_timeout);
        }
    }
}

/// New attempts: the py functions they need first, then pins (so that none
/// misses a result its input produces meanwhile), then the queue.
fn assign(st: &mut WorkerState, tasks: Vec<Assignment>, functions: Vec<PyFunction>) {
    for PyFunction { job, func, pickle } in functions {
        st.next_key += 1;
        st.functions.insert((job, func), (st.next_key, pickle));
    }
    let (pins, plain): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|t| !t.pending_inputs.is_empty());
    let ready: Vec<Assignment> = {
        let mut p = super::pinned::lock(&st.book.pins);
        pins.into_iter().filter_map(|a| p.add(a)).collect()
    };
    st.enqueue(plain.into_iter().chain(ready));
}
