//! `actord ctl scale N` against a real nanny: it grows by starting workers in
//! new (or retired) slots and shrinks by draining the least busy workers,
//! whose running tasks finish first.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const CONFIG: &str = "[scheduler]\nreclaim_grace = \"1s\"\n[worker]\nheartbeat = \"200ms\"\n";

fn ctl_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut full = vec!["ctl"];
    full.extend_from_slice(args);
    full.push("--json");
    let out = cluster.run(&full);
    assert!(out.status.success(), "ctl {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ctl {args:?}: {e}: {}", stdout(&out)))
}

/// The nanny's slots by state name, e.g. ("Running", 2).
fn slot_states(cluster: &Cluster) -> Vec<String> {
    let n = ctl_json(cluster, &["nannies"]);
    n[0]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| match &s["state"] {
            Value::String(name) => name.clone(),
            Value::Object(m) => m.keys().next().unwrap().clone(),
            other => panic!("slot state {other}"),
        })
        .collect()
}

#[test]
fn scale_grows_and_shrinks_the_nannies_workers_draining_busy_ones_last() {
    let cluster = Cluster::start_with_config(1, 1, CONFIG);
    let r = ctl_json(&cluster, &["scale", "3"]);
    assert!(r["message"].as_str().unwrap().contains("starting 2"), "{r}");
    let out = cluster.run(&["wait", "--workers", "3", "--timeout", "30s"]);
    assert!(out.status.success(), "the new workers register: {}", stderr(&out));
    assert_eq!(slot_states(&cluster), ["Running", "Running", "Running"]);

    // One worker runs a task until `go` exists; shrinking to one keeps it.
    let go = cluster.path("go");
    let started = cluster.path("started");
    let script = format!("touch {}; while [ ! -e {} ]; do sleep 0.02; done", started.display(), go.display());
    let out = cluster.run(&["submit", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = stdout(&out);
    assert!(wait_until(Duration::from_secs(20), || started.exists()), "the task starts");
    let t = ctl_json(&cluster, &["tasks", &job]);
    let busy = format!("w{}", t[0]["worker"]);

    let r = ctl_json(&cluster, &["scale", "1"]);
    assert!(r["message"].as_str().unwrap().contains("retiring 2"), "{r}");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let w = cluster.workers();
            w.len() == 1 && w[0].0 == busy
        }),
        "the two idle workers drain and leave, the busy one stays: {:?}",
        cluster.workers()
    );
    let states = slot_states(&cluster);
    assert_eq!(states.iter().filter(|s| *s == "Retired").count(), 2, "{states:?}");
    let r = ctl_json(&cluster, &["scale", "1"]);
    assert!(r["message"].as_str().unwrap().contains("already 1"), "{r}");

    std::fs::write(&go, "").unwrap();
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ctl_json(&cluster, &["tasks", &job])[0]["attempts"], 1, "it ran once, uninterrupted");

    // Growing again reuses a retired slot before adding one.
    let r = ctl_json(&cluster, &["scale", "2"]);
    assert!(r["message"].as_str().unwrap().contains("starting 1"), "{r}");
    let out = cluster.run(&["wait", "--workers", "2", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(slot_states(&cluster).len(), 3, "no new slot while a retired one is free");

    // Bad input is refused and changes nothing.
    let out = cluster.run(&["ctl", "scale", "1000000"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("at most"), "{}", stderr(&out));
    let out = cluster.run(&["ctl", "scale", "-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(cluster.workers().len(), 2);
}

#[test]
fn scale_without_a_nanny_says_so() {
    let cluster = Cluster::scheduler_only();
    let out = cluster.run(&["ctl", "scale", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no nanny"), "{}", stderr(&out));
}
