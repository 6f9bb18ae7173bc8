//! `TaskMap` (jobs and their tasks) and `WorkerMap` (workers, by id and by
//! connection): `get_*` panics naming the id (a broken invariant), `find_*`
//! returns `Option` (an id that came from a peer).

use super::{Job, Task, Worker};
use crate::ids::{ConnId, JobId, TaskId, WorkerId};
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeMap;

#[derive(Default)]
pub struct TaskMap {
    jobs: HashMap<JobId, Job>,
}

impl TaskMap {
    pub fn find_job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub fn find_job_mut(&mut self, id: JobId) -> Option<&mut Job> {
        self.jobs.get_mut(&id)
    }

    pub fn get_job(&self, id: JobId) -> &Job {
        self.jobs.get(&id).unwrap_or_else(|| panic!("job {id} is not in the core"))
    }

    pub fn get_job_mut(&mut self, id: JobId) -> &mut Job {
        self.jobs.get_mut(&id).unwrap_or_else(|| panic!("job {id} is not in the core"))
    }

    pub fn find_task(&self, id: TaskId) -> Option<&Task> {
        self.jobs.get(&id.job)?.tasks.get(id.idx as usize)
    }

    pub fn find_task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.jobs.get_mut(&id.job)?.tasks.get_mut(id.idx as usize)
    }

    pub fn get_task(&self, id: TaskId) -> &Task {
        self.find_task(id).unwrap_or_else(|| panic!("task {id} is not in the core"))
    }

    pub fn get_task_mut(&mut self, id: TaskId) -> &mut Task {
        self.find_task_mut(id).unwrap_or_else(|| panic!("task {id} is not in the core"))
    }

    pub fn contains(&self, id: JobId) -> bool {
        self.jobs.contains_key(&id)
    }

    pub fn insert(&mut self, id: JobId, job: Job) {
        self.jobs.insert(id, job);
    }

    pub fn remove(&mut self, id: JobId) -> Option<Job> {
        self.jobs.remove(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&JobId, &Job)> {
        self.jobs.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Job> {
        self.jobs.values_mut()
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

impl<'a> IntoIterator for &'a TaskMap {
    type Item = (&'a JobId, &'a Job);
    type IntoIter = std::collections::hash_map::Iter<'a, JobId, Job>;
    fn into_iter(self) -> Self::IntoIter {
        self.jobs.iter()
    }
}

/// Registered workers, in id order, and which connection each speaks on.
#[derive(Default)]
pub struct WorkerMap {
    workers: BTreeMap<WorkerId, Worker>,
    by_conn: HashMap<ConnId, WorkerId>,
}

impl WorkerMap {
    pub fn find_worker(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.get(&id)
    }

    pub fn find_worker_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.workers.get_mut(&id)
    }

    pub fn get_worker(&self, id: WorkerId) -> &Worker {
        self.workers.get(&id).unwrap_or_else(|| panic!("worker {id} is not registered"))
    }

    pub fn get_worker_mut(&mut self, id: WorkerId) -> &mut Worker {
        self.workers.get_mut(&id).unwrap_or_else(|| panic!("worker {id} is not registered"))
    }

    /// The worker registered on `conn`, if any.
    pub fn by_conn(&self, conn: ConnId) -> Option<WorkerId> {
        self.by_conn.get(&conn).copied()
    }

    pub fn insert(&mut self, id: WorkerId, w: Worker) {
        self.by_conn.insert(w.conn, id);
        self.workers.insert(id, w);
    }

    pub fn remove(&mut self, id: WorkerId) -> Option<Worker> {
        let w = self.workers.remove(&id)?;
        self.by_conn.remove(&w.conn);
        Some(w)
    }

    pub fn contains(&self, id: WorkerId) -> bool {
        self.workers.contains_key(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&WorkerId, &Worker)> {
        self.workers.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &WorkerId> {
        self.workers.keys()
    }

    pub fn values(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.workers.values_mut()
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Asserts that the connection index and the workers agree.
    pub fn check(&self) {
        assert_eq!(self.by_conn.len(), self.workers.len(), "one connection per worker");
        for (conn, id) in &self.by_conn {
            assert_eq!(self.get_worker(*id).conn, *conn, "{id} on {conn}");
        }
    }
}
