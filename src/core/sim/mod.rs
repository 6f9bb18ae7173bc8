//! A deterministic, seeded simulation of the core: random workers join,
//! report in batches, die, hang and wake up, answer or ignore steals, are
//! retired; clients submit random graphs, cancel, retry and forget; the
//! scheduler restarts by replaying its journal. `sanity_check` after every
//! step; at the end a calm phase in which every job must finish, with every
//! result recorded exactly once. `ACTORD_SIM_SEED=N` replays one seed;
//! `ACTORD_SIM_SEEDS` and `ACTORD_SIM_STEPS` set the size of a run.

mod worker;

use super::testenv::step::{
    on_cancel, on_connection_closed, on_forget, on_heartbeat, on_released, on_reports, on_retire_worker,
    on_retry, on_submit, on_tick, on_worker_draining, on_worker_joined, on_worker_lost,
};
use super::*;
use crate::ids::{ConnId, JobId, TaskId};
use crate::journal_record::Record;
use crate::protocol::{Dep, Outcome, Resources, TaskKind, TaskReport, TaskSpec, ToWorker};
use rustc_hash::FxHashMap as HashMap;
use std::cell::RefCell;
use std::collections::VecDeque;
use worker::{Reply, SimFx, SimWorker};

const TIMEOUT_US: u64 = 1_000_000;
const TICK_US: u64 = TIMEOUT_US / 4;
const BEAT_US: u64 = 200_000;
const GRACE_US: u64 = 500_000;
const CLIENT: ConnId = ConnId(1);
const EVENTS_KEPT: usize = 80;

thread_local! {
    static EVENTS: RefCell<VecDeque<String>> = const { RefCell::new(VecDeque::new()) };
}

fn event(s: String) {
    EVENTS.with(|e| {
        let mut e = e.borrow_mut();
        if e.len() == EVENTS_KEPT {
            e.pop_front();
        }
        e.push_back(s);
    });
}

struct Sim {
    rng: fastrand::Rng,
    core: Core,
    fx: SimFx,
    now: u64,
    next_tick: u64,
    next_conn: u64,
    next_pid: u32,
    workers: Vec<SimWorker>,
    /// Every job submitted (and accepted), with its number of tasks.
    jobs: Vec<(JobId, usize)>,
    /// Jobs submitted since the last restart: their tasks accept reports
    /// only from the workers they were handed to.
    fresh: Vec<(JobId, usize)>,
}

fn config() -> CoreConfig {
    CoreConfig { heartbeat_timeout_us: TIMEOUT_US, retry_backoff_us: 100_000, ..Default::default() }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim {
            rng: fastrand::Rng::with_seed(seed),
            core: Core::new(config()),
            fx: SimFx::default(),
            now: 1_000_000,
            next_tick: 1_000_000 + TICK_US,
            next_conn: 100,
            next_pid: 1,
            workers: Vec::new(),
            jobs: Vec::new(),
            fresh: Vec::new(),
        }
    }

    /// Hands the messages the core sent to the workers' inboxes.
    fn route(&mut self) {
        for (conn, msg) in std::mem::take(&mut self.fx.workers) {
            if let Some(w) = self.workers.iter_mut().find(|w| w.conn == Some(conn)) {
                match &msg {
                    ToWorker::Assign { tasks, .. } => {
                        w.given.extend(tasks.iter().map(|a| a.task));
                        let list: Vec<_> =
                            tasks.iter().map(|a| (a.task, a.attempt, a.pending_inputs.len())).collect();
                        event(format!("  -> {conn} assign {list:?}"));
                    }
                    ToWorker::Cancel { tasks } => event(format!("  -> {conn} cancel {tasks:?}")),
                    ToWorker::Steal { tasks } => event(format!("  -> {conn} steal {tasks:?}")),
                    _ => {}
                }
                w.inbox.push_back(msg);
            }
        }
    }

    fn register(&mut self, i: usize) {
        let w = &self.workers[i];
        let conn = w.conn.expect("connected");
        let nw = NewWorker {
            slots: w.slots,
            host: "sim".into(),
            pid: w.pid,
            functions: vec!["inc".into()],
            nanny: None,
            running: w.running(),
            resources: w.resources.clone(),
            ends_at: None,
        };
        event(format!("{conn} (pid {}) registers, running {:?}", w.pid, nw.running));
        on_worker_joined(&mut self.core, &mut self.fx, self.now, conn, nw);
        self.workers[i].last_beat = self.now;
    }

    fn connect(&mut self, i: usize) {
        self.next_conn += 1;
        self.workers[i].reconnected(ConnId(self.next_conn));
        self.register(i);
    }

    fn join(&mut self) {
        let slots = self.rng.u32(1..=3);
        let mut res = Resources::new();
        if self.rng.u8(..4) == 0 {
            res.insert("gpus".into(), self.rng.u64(1..=2));
        }
        self.next_pid += 1;
        let mut w = SimWorker::new(self.next_pid, slots, res);
        w.ignores_steals = self.rng.u8(..5) == 0;
        w.hostile = self.rng.u8(..15) == 0;
        self.workers.push(w);
        let i = self.workers.len() - 1;
        self.connect(i);
    }

    fn close(&mut self, i: usize) {
        if let Some(conn) = self.workers[i].conn.take() {
            event(format!("{conn} closed"));
            on_connection_closed(&mut self.core, &mut self.fx, self.now, conn);
        }
        self.workers[i].inbox.clear();
    }

    /// One worker reads its next message, or runs, or sends its reports.
    fn work(&mut self, i: usize) {
        if self.workers[i].hung || self.workers[i].conn.is_none() {
            return;
        }
        if !self.workers[i].inbox.is_empty() && self.rng.bool() {
            return self.read(i);
        }
        let conn = self.workers[i].conn.expect("connected");
        let w = &mut self.workers[i];
        let running = (w.slots as usize).min(w.queue.len());
        if running > 0 && self.rng.bool() {
            let k = self.rng.usize(..running);
            let ok = self.rng.u8(..10) > 0;
            event(format!("{conn} finishes {} ok={ok}", w.queue[k].task));
            w.finish(k, ok);
        } else if !w.unsent.is_empty() {
            self.flush(i);
        } else if w.hostile {
            self.forge(i);
        }
    }

    /// A worker reads what has come from the scheduler, in order.
    fn read(&mut self, i: usize) {
        let conn = self.workers[i].conn.expect("connected");
        while let Some(msg) = self.workers[i].inbox.pop_front() {
            match self.workers[i].handle(msg) {
                Some(Reply::Released(tasks)) => {
                    event(format!("{conn} released {tasks:?}"));
                    on_released(&mut self.core, &mut self.fx, conn, tasks);
                }
                Some(Reply::Register) => self.register(i),
                None => {}
            }
            self.after_read(i);
        }
    }

    /// A worker told to retire hands back what has not started, runs the
    /// rest and says goodbye once its reports are acknowledged.
    fn after_read(&mut self, i: usize) {
        let w = &mut self.workers[i];
        let conn = w.conn.expect("connected");
        if w.draining && w.wid.is_some() {
            let back = w.take_unstarted();
            if !back.is_empty() {
                event(format!("{conn} draining, returns {back:?}"));
                on_worker_draining(&mut self.core, &mut self.fx, conn, back);
            }
        }
    }

    fn flush(&mut self, i: usize) {
        let w = &mut self.workers[i];
        let conn = w.conn.expect("connected");
        let batch = w.next_batch;
        w.next_batch += 1;
        let reports = std::mem::take(&mut w.unsent);
        w.unacked.push((batch, reports.clone()));
        event(format!(
            "{conn} reports batch {batch}: {:?}",
            reports.iter().map(|r| (r.task, r.attempt)).collect::<Vec<_>>()
        ));
        on_reports(&mut self.core, &mut self.fx, self.now, conn, batch, reports);
    }

    /// A hostile peer reports a task it was never given.
    fn forge(&mut self, i: usize) {
        if self.fresh.is_empty() {
            return;
        }
        let (job, n) = self.fresh[self.rng.usize(..self.fresh.len())];
        let task = TaskId { job, idx: self.rng.u32(..n as u32) };
        let w = &self.workers[i];
        if w.given.contains(&task) {
            return;
        }
        let conn = w.conn.expect("connected");
        let forged = TaskReport {
            task,
            attempt: 1,
            outcome: Outcome::Ok { result: FORGED.into() },
            micros: 1,
            executor_died: false,
            lost_inputs: Vec::new(),
        };
        event(format!("{conn} forges {task}"));
        // Numbered as its own frames, so that its honest side goes on working.
        let w = &mut self.workers[i];
        let batch = w.next_batch;
        w.next_batch += 1;
        w.unacked.push((batch, Vec::new()));
        on_reports(&mut self.core, &mut self.fx, self.now, conn, batch, vec![forged]);
    }
}

const FORGED: &[u8] = b"forged";

impl Sim {
    fn pick_job(&mut self) -> Option<JobId> {
        (!self.jobs.is_empty()).then(|| self.jobs[self.rng.usize(..self.jobs.len())].0)
    }

    fn random_tasks(&mut self) -> Vec<TaskSpec> {
        let n = self.rng.usize(1..=8);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let mut t = TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![0xc0] });
            t.key = Some(format!("t{i}"));
            for _ in 0..self.rng.usize(..=2) {
                if i > 0 && self.rng.u8(..3) > 0 {
                    let d = Dep::key(format!("t{}", self.rng.usize(..i)));
                    if !t.deps.contains(&d) {
                        t.deps.push(d);
                    }
                } else if let Some(job) = self.pick_job().filter(|j| self.core.jobs.contains(*j)) {
                    let n = self.core.jobs.get_job(job).tasks.len();
                    t.deps.push(Dep { job: Some(job), key: format!("t{}", self.rng.usize(..n)) });
                }
            }
            t.priority = self.rng.i32(-2..=2);
            t.retries = self.rng.u32(..=2);
            if self.rng.u8(..8) == 0 {
                t.resources.insert("gpus".into(), 1);
            }
            if self.rng.u8(..5) == 0 {
                t.time_limit_ms = Some(self.rng.u64(1..=60_000));
            }
            if self.rng.u8(..6) == 0 {
                t.max_worker_kills = Some(self.rng.u32(1..=3));
            }
            tasks.push(t);
        }
        if self.rng.u8(..20) == 0 {
            tasks[0].resources.insert("gpus".into(), u64::MAX); // refused
        }
        tasks
    }

    fn submit(&mut self) {
        if self.rng.u8(..6) == 0 {
            if let Some(job) = self.pick_job().filter(|j| self.core.jobs.contains(*j)) {
                // A resubmission after a lost reply: nothing changes.
                let tasks = self.core.jobs.get_job(job).tasks.len();
                let specs = vec![TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![] }); tasks];
                event(format!("resubmit {job:?}"));
                return on_submit(&mut self.core, &mut self.fx, self.now, CLIENT, job, "again".into(), specs);
            }
        }
        let job = JobId(uuid::Uuid::from_u128(self.rng.u128(..)));
        let tasks = self.random_tasks();
        let n = tasks.len();
        let deps: Vec<_> =
            tasks.iter().map(|t| t.deps.iter().map(|d| d.key.clone()).collect::<Vec<_>>()).collect();
        event(format!("submit {job:?}, {n} tasks, deps {deps:?}"));
        on_submit(&mut self.core, &mut self.fx, self.now, CLIENT, job, "sim".into(), tasks);
        if self.core.jobs.contains(job) {
            self.jobs.push((job, n));
            self.fresh.push((job, n));
        }
    }

    fn client_op(&mut self) {
        let Some(job) = self.pick_job() else { return self.submit() };
        let (core, fx, now) = (&mut self.core, &mut self.fx, self.now);
        match self.rng.u8(..8) {
            0 | 1 => {
                let keys = match core.jobs.find_job(job) {
                    Some(j) if self.rng.bool() => vec![format!("t{}", self.rng.usize(..j.tasks.len()))],
                    _ => vec![],
                };
                event(format!("cancel {job:?} {keys:?}"));
                on_cancel(core, fx, now, CLIENT, job, keys);
            }
            2 | 3 => {
                event(format!("retry {job:?}"));
                on_retry(core, fx, CLIENT, job);
            }
            4 => {
                event(format!("forget {job:?}"));
                on_forget(core, fx, CLIENT, job);
            }
            5 => {
                let wid = core.workers.keys().nth(self.rng.usize(..core.workers.len().max(1)));
                if let Some(wid) = wid.copied() {
                    event(format!("retire {wid}"));
                    on_retire_worker(core, fx, CLIENT, wid);
                }
            }
            _ => {
                // Read-only queries must hold up in any state.
                on_tasks(core, fx, CLIENT, job);
                on_job(core, fx, now, CLIENT, job);
                on_explain(core, fx, CLIENT, job, "t0".into());
                on_status(core, fx, CLIENT, StatusExtra::default());
                on_list_workers(core, fx, now, CLIENT);
                on_jobs(core, fx, CLIENT);
            }
        }
    }

    /// The scheduler dies and a new one replays the journal; every worker
    /// loses its connection and reconnects later.
    fn restart(&mut self) {
        event("scheduler restarts".into());
        let mut core = Core::new(config());
        replay(&mut core, self.now, self.fx.journal.clone());
        begin_recovery(&mut core, self.now, GRACE_US);
        self.core = core;
        self.fresh.clear();
        for w in &mut self.workers {
            w.conn = None;
            w.inbox.clear();
        }
        self.fx.workers.clear();
    }

    /// Time passes: heartbeats of live workers, ticks of the scheduler.
    fn advance(&mut self, max_us: u64) {
        self.now += self.rng.u64(..=max_us);
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            if let (false, Some(conn), true) = (w.hung, w.conn, w.last_beat + BEAT_US <= self.now) {
                w.last_beat = self.now;
                on_heartbeat(&mut self.core, &mut self.fx, self.now, conn, 0);
            }
        }
        while self.next_tick <= self.now {
            on_tick(&mut self.core, &mut self.fx, self.next_tick);
            self.next_tick += TICK_US;
        }
    }

    fn step(&mut self) {
        let n = self.workers.len();
        match self.rng.u8(..100) {
            0..=2 if n < 6 => self.join(),
            3 if n > 0 => {
                let i = self.rng.usize(..n);
                event(format!("pid {} killed", self.workers[i].pid));
                self.close(i);
                self.workers.remove(i);
            }
            4 if n > 0 => {
                let i = self.rng.usize(..n);
                self.close(i);
            }
            5 | 6 if n > 0 => {
                let i = self.rng.usize(..n);
                let w = &mut self.workers[i];
                w.hung = !w.hung;
                event(format!("pid {} hung={}", w.pid, w.hung));
            }
            7 if self.rng.u8(..4) == 0 => self.restart(),
            8..=13 => self.submit(),
            14..=19 => self.client_op(),
            20..=29 => self.advance(TICK_US),
            _ if n > 0 => {
                let i = self.rng.usize(..n);
                if self.workers[i].conn.is_none() && !self.workers[i].hung {
                    self.connect(i);
                } else {
                    self.work(i);
                }
            }
            _ => {}
        }
        self.route();
        self.goodbyes();
        self.core.sanity_check();
    }

    /// Retired workers that are done say goodbye and exit; one that lost
    /// its connection while draining just exits.
    fn goodbyes(&mut self) {
        self.workers.retain(|w| !(w.draining && w.conn.is_none()));
        for i in (0..self.workers.len()).rev() {
            let w = &self.workers[i];
            if w.draining && !w.hung && w.queue.is_empty() && w.unsent.is_empty() && w.unacked.is_empty() {
                if let Some(conn) = w.conn {
                    event(format!("{conn} says goodbye"));
                    if let Some(wid) = self.core.workers.by_conn(conn) {
                        on_worker_lost(
                            &mut self.core,
                            &mut self.fx,
                            self.now,
                            wid,
                            LostWorkerReason::Goodbye,
                        );
                    }
                    self.close(i);
                    self.workers.remove(i);
                    self.route();
                }
            }
        }
    }
}

impl Sim {
    /// No more faults: every job must finish.
    fn calm(&mut self) {
        event("calm phase".into());
        for w in &mut self.workers {
            w.hung = false;
            w.hostile = false;
        }
        let mut gpus = Resources::new();
        gpus.insert("gpus".into(), 2);
        self.next_pid += 1;
        self.workers.push(SimWorker::new(self.next_pid, 2, gpus));
        for round in 0..5_000 {
            if self.core.jobs.values().all(|j| j.is_done()) && self.core.assigned_count() == 0 {
                return;
            }
            for i in 0..self.workers.len() {
                if self.workers[i].conn.is_none() {
                    self.connect(i);
                }
                for _ in 0..3 {
                    self.work(i);
                    self.route();
                }
            }
            self.advance(TICK_US / 2);
            self.route();
            self.goodbyes();
            self.core.sanity_check();
            assert!(round < 4_999, "calm phase: jobs never finish:\n{}", self.unfinished());
        }
    }

    fn unfinished(&self) -> String {
        let mut out = String::new();
        for (jid, j) in &self.core.jobs {
            for (idx, t) in j.tasks.iter().enumerate().filter(|(_, t)| t.outcome.is_none()) {
                out += &format!(
                    "  {jid:?}@{idx}: {:?} waiting={} local={:?}\n",
                    t.state, t.waiting, t.local_inputs
                );
            }
        }
        for w in &self.workers {
            let queue: Vec<_> = w.queue.iter().map(|a| (a.task, a.attempt)).collect();
            let pinned: Vec<_> = w.pinned.iter().map(|(a, m)| (a.task, m.clone())).collect();
            out += &format!(
                "  pid {} {:?} {:?} slots={} draining={} queue={queue:?} pinned={pinned:?} canceled={:?} unsent={} unacked={}\n",
                w.pid, w.conn, w.wid, w.slots, w.draining, w.canceled, w.unsent.len(), w.unacked.len()
            );
        }
        out
    }

    /// Every task of every job still known has its outcome, recorded once in
    /// the journal per life (submission or retry), and none was forged.
    fn check_recorded_once(&self) {
        let mut count: HashMap<TaskId, (u32, Option<Outcome>)> = HashMap::default();
        for r in &self.fx.journal {
            match r {
                Record::JobSubmitted { job, tasks, .. } => {
                    for idx in 0..tasks.len() as u32 {
                        count.entry(TaskId { job: *job, idx }).or_insert((0, None));
                    }
                }
                Record::TasksDone { job, done } => {
                    for d in done.tasks().iter() {
                        let c = count.entry(TaskId { job: *job, idx: d.idx }).or_insert((0, None));
                        c.0 += 1;
                        c.1 = Some(d.outcome.clone().into());
                        assert!(c.0 == 1, "{job:?}@{} recorded twice", d.idx);
                    }
                }
                Record::TasksRetried { job, idx } | Record::ResultsLost { job, idx } => {
                    for i in idx {
                        count.insert(TaskId { job: *job, idx: *i }, (0, None));
                    }
                }
                Record::JobForgotten { job } => count.retain(|t, _| t.job != *job),
                Record::History(_) => {}
            }
        }
        for (jid, j) in &self.core.jobs {
            for (idx, t) in j.tasks.iter().enumerate() {
                let id = TaskId { job: *jid, idx: idx as u32 };
                let (n, journaled) = count.get(&id).cloned().unwrap_or((0, None));
                assert_eq!(n, 1, "{id} recorded {n} times");
                let outcome = j.outcome(idx as u32);
                assert_eq!(t.outcome.is_some(), outcome.is_some(), "{id}: record and outcome disagree");
                assert_eq!(journaled, outcome, "{id}: journal and core disagree");
                assert!(!matches!(&outcome, Some(Outcome::Ok { result }) if result == FORGED), "{id} forged");
            }
        }
    }
}

fn run(seed: u64, steps: usize) {
    EVENTS.with(|e| e.borrow_mut().clear());
    let mut sim = Sim::new(seed);
    for _ in 0..2 {
        sim.join();
    }
    for _ in 0..steps {
        sim.step();
    }
    sim.calm();
    sim.check_recorded_once();
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// One seed, with its seed and last events printed if it fails.
fn run_reporting(seed: u64, steps: usize) {
    let result = std::panic::catch_unwind(|| run(seed, steps));
    if let Err(e) = result {
        eprintln!("simulation failed: seed {seed}, {steps} steps; replay with ACTORD_SIM_SEED={seed}");
        eprintln!("last events:");
        EVENTS.with(|ev| ev.borrow().iter().for_each(|e| eprintln!("  {e}")));
        std::panic::resume_unwind(e);
    }
}

/// CI runs 2,000 seeds of 300 steps; `ACTORD_SIM_SEEDS=100000` soaks.
#[test]
fn simulation() {
    let steps = env("ACTORD_SIM_STEPS").unwrap_or(300) as usize;
    if let Some(seed) = env("ACTORD_SIM_SEED") {
        return run_reporting(seed, steps);
    }
    let first = env("ACTORD_SIM_FIRST_SEED").unwrap_or(0);
    for seed in first..first + env("ACTORD_SIM_SEEDS").unwrap_or(2_000) {
        run_reporting(seed, steps);
    }
}
