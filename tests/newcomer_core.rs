//! Real processes: a misspelt function name is refused at submit, and a job
//! id reused for other tasks is refused while the same tasks again are not.

mod common;
use common::*;

#[test]
fn a_misspelt_function_is_refused_at_submit_with_the_known_ones() {
    let cluster = Cluster::start(1, 1);
    let out = cluster.run(&["submit", "--fn", "incc", "--args", "1"]);
    assert!(!out.status.success(), "accepted: {}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("no registered worker has function \"incc\""), "{err}");
    assert!(err.contains("inc") && err.contains("they have:"), "{err}");
    assert!(stdout(&out).is_empty(), "no job id printed: {}", stdout(&out));
    let jobs = cluster.run(&["ctl", "jobs", "--json"]);
    assert!(jobs.status.success(), "{}", stderr(&jobs));
    let v: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(v.as_array().map(|a| a.len()), Some(0), "no job was created: {v}");
}

#[test]
fn a_job_id_reused_for_other_tasks_is_refused() {
    let cluster = Cluster::start(1, 1);
    let id = "6f1d3c2e-8a4b-4c5d-9e6f-0a1b2c3d4e5f";
    let first = cluster.run(&["submit", "--job-id", id, "--fn", "inc", "--args", "1"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(stdout(&first).trim(), id);
    // The same submission again (as after a lost reply): the same job.
    let again = cluster.run(&["submit", "--job-id", id, "--fn", "inc", "--args", "1"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again).trim(), id);
    // Other tasks under the same id: refused, the job is unchanged.
    let other = cluster.run(&["submit", "--job-id", id, "--fn", "inc", "--args", "41"]);
    assert!(!other.status.success(), "accepted: {}", stdout(&other));
    assert!(stderr(&other).contains(&format!("job {id} exists with other tasks")), "{}", stderr(&other));
    let out = cluster.run(&["gather", id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["results"], serde_json::json!([2]), "the first job's result");
}
