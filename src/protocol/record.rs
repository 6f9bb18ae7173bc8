//! Wire types into journal records and back: the only place the two meet,
//! so that either can change without the other (see `journal_record`).

use super::{Dep, Outcome, TaskKind, TaskSpec};
use crate::journal_record as rec;

impl From<&TaskSpec> for rec::TaskSpec {
    fn from(t: &TaskSpec) -> rec::TaskSpec {
        t.clone().into()
    }
}

impl From<TaskSpec> for rec::TaskSpec {
    fn from(t: TaskSpec) -> rec::TaskSpec {
        rec::TaskSpec {
            key: t.key,
            kind: t.kind.into(),
            max_worker_kills: t.max_worker_kills,
            deps: t.deps.into_iter().map(|d| rec::Dep { job: d.job, key: d.key }).collect(),
            priority: t.priority,
            retries: t.retries,
            time_limit_ms: t.time_limit_ms,
            resources: t.resources,
            time_request_ms: t.time_request_ms,
        }
    }
}

impl From<rec::TaskSpec> for TaskSpec {
    fn from(t: rec::TaskSpec) -> TaskSpec {
        TaskSpec {
            key: t.key,
            kind: t.kind.into(),
            max_worker_kills: t.max_worker_kills,
            deps: t.deps.into_iter().map(|d| Dep { job: d.job, key: d.key }).collect(),
            priority: t.priority,
            retries: t.retries,
            time_limit_ms: t.time_limit_ms,
            resources: t.resources,
            time_request_ms: t.time_request_ms,
        }
    }
}

impl From<TaskKind> for rec::TaskKind {
    fn from(k: TaskKind) -> rec::TaskKind {
        match k {
            TaskKind::Fn { name, args } => rec::TaskKind::Fn { name, args },
            TaskKind::Cmd { argv, env, discard_output, cwd } => {
                rec::TaskKind::Cmd { argv, env, discard_output, cwd }
            }
            TaskKind::Py { func, args } => rec::TaskKind::Py { func, args },
        }
    }
}

impl From<rec::TaskKind> for TaskKind {
    fn from(k: rec::TaskKind) -> TaskKind {
        match k {
            rec::TaskKind::Fn { name, args } => TaskKind::Fn { name, args },
            rec::TaskKind::Cmd { argv, env, discard_output, cwd } => {
                TaskKind::Cmd { argv, env, discard_output, cwd }
            }
            rec::TaskKind::Py { func, args } => TaskKind::Py { func, args },
        }
    }
}

impl From<&Outcome> for rec::Outcome {
    fn from(o: &Outcome) -> rec::Outcome {
        o.clone().into()
    }
}

impl From<Outcome> for rec::Outcome {
    fn from(o: Outcome) -> rec::Outcome {
        match o {
            Outcome::Ok { result } => rec::Outcome::Ok { result },
            Outcome::Err { error, exception } => rec::Outcome::Err { error, exception },
            Outcome::Stored(s) => rec::Outcome::Stored { path: s.path, size: s.size, checksum: s.checksum },
        }
    }
}

impl From<rec::Outcome> for Outcome {
    fn from(o: rec::Outcome) -> Outcome {
        match o {
            rec::Outcome::Ok { result } => Outcome::Ok { result },
            rec::Outcome::Err { error, exception } => Outcome::Err { error, exception },
            rec::Outcome::Stored { path, size, checksum } => {
                Outcome::Stored(super::StoredResult { path, size, checksum })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_task_spec_survives_the_journal_unchanged() {
        let kind = TaskKind::Cmd {
            argv: vec!["x".into()],
            env: vec![("A".into(), "1".into())],
            discard_output: true,
            cwd: Some("/w".into()),
        };
        let job = crate::ids::JobId::new();
        let spec = TaskSpec {
            key: Some("k".into()),
            deps: vec![Dep::key("0"), Dep { job: Some(job), key: "1".into() }],
            priority: 3,
            retries: 1,
            max_worker_kills: Some(2),
            time_limit_ms: Some(9),
            resources: [("gpus".to_string(), 1)].into(),
            time_request_ms: Some(7),
            ..TaskSpec::new(kind)
        };
        let back: TaskSpec = rec::TaskSpec::from(&spec).into();
        assert_eq!(back, spec);
        for kind in [
            TaskKind::Fn { name: "f".into(), args: vec![1] },
            TaskKind::Py { func: 2, args: Bytes::from_static(b"a") },
        ] {
            assert_eq!(TaskKind::from(rec::TaskKind::from(kind.clone())), kind);
        }
        let err = Outcome::Err { error: "e".into(), exception: Some(Bytes::from_static(b"x")) };
        for o in [Outcome::Ok { result: Bytes::from_static(&[1]) }, err] {
            assert_eq!(Outcome::from(rec::Outcome::from(&o)), o);
        }
    }
}
