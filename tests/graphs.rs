//! Task graphs and job control on a real cluster: dependencies with results
//! as inputs, failure propagation, retries, priorities, cancel.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const CONFIG: &str = "[scheduler]\nretry_backoff = \"100ms\"\nreclaim_grace = \"2s\"\n";

fn json_out(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(out)))
}

fn submit_graph(cluster: &Cluster, name: &str, graph: &Value) -> String {
    let path = cluster.path(name);
    std::fs::write(&path, graph.to_string()).unwrap();
    let out = cluster.run(&["submit", "--graph", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn gather_key(cluster: &Cluster, job: &str, key: &str) -> Value {
    let out = cluster.run(&["gather", job, "--key", key]);
    assert!(out.status.success(), "{}", stderr(&out));
    json_out(&out)
}

#[test]
fn chain_tree_diamond_and_fan_in_compute_the_right_results() {
    let cluster = Cluster::start_with_config(2, 1, CONFIG);
    // chain: c0 = inc(0), c_i = inc(c_{i-1})
    let mut tasks = vec![json!({"key": "c0", "fn": "inc", "args": 0})];
    tasks.extend(
        (1..50).map(|i| json!({"key": format!("c{i}"), "fn": "inc", "deps": [format!("c{}", i - 1)]})),
    );
    // binary tree reduction of leaves 1..=16 with add
    let mut level: Vec<String> = (1..=16).map(|i| format!("l{i}")).collect();
    tasks.extend((1..=16).map(|i| json!({"key": format!("l{i}"), "fn": "inc", "args": i - 1})));
    let mut n = 0;
    while level.len() > 1 {
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            n += 1;
            let key = format!("t{n}");
            tasks.push(json!({"key": key, "fn": "add", "deps": [pair[0], pair[1]]}));
            next.push(key);
        }
        level = next;
    }
    let root = level[0].clone();
    // diamond: a → b, c → d
    tasks.push(json!({"key": "a", "fn": "inc", "args": 1}));
    tasks.push(json!({"key": "b", "fn": "inc", "deps": ["a"]}));
    tasks.push(json!({"key": "c", "fn": "add", "args": 10, "deps": ["a"]}));
    tasks.push(json!({"key": "d", "fn": "add", "deps": ["b", "c"]}));
    // wide fan-in: sum of 200 inc tasks
    tasks.extend((0..200).map(|i| json!({"key": format!("w{i}"), "fn": "inc", "args": i})));
    tasks.push(
        json!({"key": "all", "fn": "sum", "deps": (0..200).map(|i| format!("w{i}")).collect::<Vec<_>>()}),
    );
    let job = submit_graph(&cluster, "g.json", &json!({"name": "shapes", "tasks": tasks}));

    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_out(&out)["failed"], 0);
    assert_eq!(gather_key(&cluster, &job, "c49"), json!(50));
    assert_eq!(gather_key(&cluster, &job, &root), json!((1..=16).sum::<i64>()));
    // a = 2, b = 3, c = add([10, 2]) = 12, d = 15
    assert_eq!(gather_key(&cluster, &job, "d"), json!(15));
    assert_eq!(gather_key(&cluster, &job, "all"), json!((1..=200).sum::<i64>()));

    // A later job can take an earlier job's result.
    let next = json!([{"key": "x", "fn": "inc", "deps": [{"job": job, "key": "d"}]}]);
    let job2 = submit_graph(&cluster, "g2.json", &next);
    assert_eq!(gather_key(&cluster, &job2, "x"), json!(16));
}

#[test]
fn bad_graphs_are_refused_whole() {
    let cluster = Cluster::scheduler_only();
    let path = cluster.path("cycle.json");
    std::fs::write(
        &path,
        json!([{"key": "a", "fn": "inc", "deps": ["b"]}, {"key": "b", "fn": "inc", "deps": ["a"]}])
            .to_string(),
    )
    .unwrap();
    let out = cluster.run(&["submit", "--graph", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cycle"), "{}", stderr(&out));
    std::fs::write(&path, json!([{"key": "a", "fn": "inc", "deps": ["zz"]}]).to_string()).unwrap();
    let out = cluster.run(&["submit", "--graph", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("\"zz\""), "{}", stderr(&out));
    std::fs::write(&path, json!([{"key": "a", "cmd": []}]).to_string()).unwrap();
    let out = cluster.run(&["submit", "--graph", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn failures_propagate_and_retries_succeed_on_attempt_two() {
    let cluster = Cluster::start_with_config(2, 1, CONFIG);
    let graph = json!([
        {"key": "bad", "fn": "fail", "args": "disk on fire"},
        {"key": "after", "fn": "inc", "deps": ["bad"]},
        {"key": "flaky", "cmd": ["sh", "-c", "test \"$ACTORD_ATTEMPT\" -ge 2"], "retries": 2},
        {"key": "fine", "fn": "inc", "args": 1},
    ]);
    let job = submit_graph(&cluster, "g.json", &graph);
    let out = cluster.run(&["gather", &job]);
    assert_eq!(out.status.code(), Some(1));
    let doc = json_out(&out);
    let failures = doc["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2);
    let after = failures.iter().find(|f| f["task"] == 1).unwrap();
    assert_eq!(after["error"], "dependency bad failed: disk on fire");
    assert_eq!(doc["results"][3], json!(2));
    // The flaky command failed once, then passed on its second attempt.
    assert!(doc["results"][2]["stdout"].as_str().unwrap().ends_with("/2.2.out"), "{}", doc["results"][2]);
}

#[test]
fn priorities_order_the_queue() {
    // No worker yet: everything waits in the scheduler's queue.
    let mut cluster = Cluster::scheduler_with_config(Some(CONFIG));
    let marks = cluster.path("marks");
    let echo = |what: &str| format!("echo {what} >> {}", marks.display());
    let lo = cluster.run(&["submit", "--priority", "-5", "--", "sh", "-c", &echo("lo")]);
    let mid = cluster.run(&["submit", "--", "sh", "-c", &echo("mid")]);
    let hi = cluster.run(&["submit", "--priority", "5", "--", "sh", "-c", &echo("hi")]);
    for o in [&lo, &mid, &hi] {
        assert!(o.status.success(), "{}", stderr(o));
    }
    cluster.start_nanny(1, 1);
    assert!(cluster.run(&["gather", &stdout(&mid)]).status.success());
    assert!(cluster.run(&["gather", &stdout(&lo)]).status.success());
    assert!(cluster.run(&["gather", &stdout(&hi)]).status.success());
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "hi\nmid\nlo\n");
}

#[test]
fn cancel_terminates_running_commands_and_fails_the_rest() {
    let cluster = Cluster::start_with_config(2, 1, CONFIG);
    let pids = cluster.path("pids");
    let script = format!("echo $$ >> {}; exec sleep 60", pids.display());
    let out = cluster.run(&["submit", "--array", "1-5", "--", "sh", "-c", &script]);
    let job = stdout(&out);
    let read_pids = || -> Vec<i32> {
        std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    assert!(wait_until(Duration::from_secs(20), || read_pids().len() == 2), "two commands running");
    let out = cluster.run(&["ctl", "cancel", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cluster.scheduler.log_text().contains("admin request"), "cancel is logged with who asked");
    assert!(stdout(&out).contains("canceled 5 tasks"), "the answer on stdout: {}", stdout(&out));
    let running = read_pids();
    assert!(
        wait_until(Duration::from_secs(10), || running.iter().all(|p| !pid_alive(*p))),
        "commands left running"
    );
    let out = cluster.run(&["gather", &job]);
    assert_eq!(out.status.code(), Some(1));
    let doc = json_out(&out);
    assert_eq!(doc["failed"], 5);
    assert!(doc["failures"].as_array().unwrap().iter().all(|f| f["error"] == "canceled"));
    assert_eq!(read_pids().len(), 2, "queued commands never started");
    // The workers are free again.
    let out = cluster.run(&["submit", "--fn", "inc", "--args", "1"]);
    assert!(cluster.run(&["gather", &stdout(&out)]).status.success());
}

#[test]
fn commands_read_their_inputs_and_a_graph_survives_a_scheduler_restart() {
    let mut cluster = Cluster::start_with_config(2, 1, CONFIG);
    let marks = cluster.path("marks");
    let step = |key: &str| json!({"key": key, "cmd": ["sh", "-c", format!("sleep 0.3; echo {key} $(cat $ACTORD_INPUT_0 2>/dev/null) >> {}", marks.display())]});
    let mut tasks = vec![json!({"key": "seed", "fn": "add", "args": [20, 22]})];
    let mut s1 = step("s1");
    s1["deps"] = json!(["seed"]);
    tasks.push(s1);
    for i in 2..=6 {
        let mut s = step(&format!("s{i}"));
        s["deps"] = json!([format!("s{}", i - 1)]);
        tasks.push(s);
    }
    let job = submit_graph(&cluster, "g.json", &Value::Array(tasks));
    assert!(wait_until(Duration::from_secs(30), || std::fs::read_to_string(&marks)
        .is_ok_and(|m| m.lines().count() >= 2)));
    cluster.kill_scheduler();
    cluster.restart_scheduler();
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = std::fs::read_to_string(&marks).unwrap();
    let lines: Vec<&str> = m.lines().collect();
    assert_eq!(lines[0], "s1 42", "a command gets its dependency's result as a JSON file");
    let keys: Vec<&str> = lines.iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(keys, vec!["s1", "s2", "s3", "s4", "s5", "s6"], "in order, each once: {m}");
}

#[test]
fn time_limits_stop_commands_and_fail_functions() {
    let cluster = Cluster::start_with_config(2, 1, CONFIG);
    let pids = cluster.path("pids");
    let script = format!("echo $$ >> {}; exec sleep 30", pids.display());
    let cmd = stdout(&cluster.run(&["submit", "--time-limit", "500ms", "--", "sh", "-c", &script]));
    let func = stdout(&cluster.run(&["submit", "--fn", "sleep", "--args", "4000", "--time-limit", "300ms"]));
    let started = std::time::Instant::now();
    for job in [&cmd, &func] {
        let out = cluster.run(&["gather", job]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = json_out(&out)["failures"][0]["error"].as_str().unwrap().to_string();
        assert!(err.starts_with("time limit exceeded"), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "failed at the limit, not when the work ended");
    let pid: i32 = std::fs::read_to_string(&pids).unwrap().trim().parse().unwrap();
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(pid)), "the command was stopped");
}

#[test]
fn each_line_placeholders_env_and_discarded_output() {
    let cluster = Cluster::start_with_config(2, 1, CONFIG);
    let lines = cluster.path("lines.txt");
    std::fs::write(&lines, "alpha\nbeta\ngamma\n").unwrap();
    let marks = cluster.path("marks");
    let script =
        format!("echo {{task}}:{{entry}}:$ACTORD_ENTRY:$GREETING:{{attempt}} >> {}", marks.display());
    let out = cluster.run(&[
        "submit",
        "--each-line",
        lines.to_str().unwrap(),
        "--env",
        "GREETING=hi-{task}",
        "--output",
        "none",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_out(&out)["results"][0], json!({"exit": 0}), "no output files");
    let mut got: Vec<String> = std::fs::read_to_string(&marks).unwrap().lines().map(String::from).collect();
    got.sort();
    assert_eq!(got, vec!["1:alpha:alpha:hi-1:1", "2:beta:beta:hi-2:1", "3:gamma:gamma:hi-3:1"]);
    let out = cluster.run(&["submit", "--output", "sometimes", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn gpus_are_handed_out_per_worker_and_per_task_and_impossible_requests_wait() {
    let mut cluster = Cluster::scheduler_with_config(Some(CONFIG));
    cluster.spawn_nanny(2, 2, &["--gpus", "0,1,2,3"]);
    let out = cluster.run(&["wait", "--workers", "2", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let workers = cluster.run(&["ctl", "workers", "--json"]);
    let workers = json_out(&workers);
    assert!(workers.as_array().unwrap().iter().all(|w| w["resources"]["gpus"] == 2), "{workers}");

    let marks = cluster.path("marks");
    let script = format!("echo $ACTORD_NANNY_SLOT $CUDA_VISIBLE_DEVICES >> {}; sleep 0.2", marks.display());
    let one = stdout(&cluster.run(&[
        "submit",
        "--array",
        "1-6",
        "--resources",
        "gpus=1",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    let two = stdout(&cluster.run(&[
        "submit",
        "--array",
        "1-2",
        "--resources",
        "gpus=2",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    let never = stdout(&cluster.run(&["submit", "--resources", "gpus=8", "--", "true"]));
    for job in [&one, &two] {
        let out = cluster.run(&["gather", job]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let own = |slot: &str| if slot == "0" { ["0", "1"] } else { ["2", "3"] };
    let lines = std::fs::read_to_string(&marks).unwrap();
    let mut pairs = 0;
    for line in lines.lines() {
        let mut f = line.split_whitespace();
        let slot = f.next().unwrap();
        let gpus: Vec<&str> = f.next().unwrap_or("").split(',').collect();
        assert!(gpus.iter().all(|g| own(slot).contains(g)), "a task got another worker's GPU: {line}");
        if gpus.len() == 2 {
            pairs += 1;
        } else {
            assert_eq!(gpus.len(), 1, "{line}");
        }
    }
    assert_eq!(pairs, 2, "{lines}");
    let out = cluster.run(&["ctl", "tasks", &never, "--json"]);
    let tasks = json_out(&out);
    assert_eq!(tasks[0]["state"], "unschedulable", "{tasks}");
    assert!(tasks[0]["error"].as_str().unwrap().contains("gpus=8"));
    let out = cluster.run(&["ctl", "tasks", &never]);
    assert!(stdout(&out).contains("unschedulable"), "{}", stdout(&out));
}

#[test]
fn a_new_idle_worker_steals_work_queued_on_a_busy_one() {
    let cluster = Cluster::start_with_config(1, 1, CONFIG);
    // Fast tasks first: the worker looks quick and gets a deep prefetch window.
    let warm = cluster.path("warm.jsonl");
    std::fs::write(&warm, (0..2000).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    let out = cluster.run(&["map", "inc", "--inputs", warm.to_str().unwrap()]);
    assert!(cluster.run(&["gather", &stdout(&out)]).status.success());
    let marks = cluster.path("marks");
    let script = format!("echo $ACTORD_TASK $ACTORD_WORKER >> {}; sleep 0.4", marks.display());
    let job = stdout(&cluster.run(&["submit", "--array", "1-8", "--", "sh", "-c", &script]));
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_to_string(&marks).is_ok()));
    // A second worker joins while the first one holds all eight.
    let mut cmd = cluster.command(&["nanny"]);
    cmd.args(["--workers", "1"]);
    let _second = Proc::spawn("nanny-2", cmd, cluster.dir.path());
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&marks).unwrap();
    let lines: Vec<(&str, &str)> = text.lines().map(|l| l.split_once(' ').unwrap()).collect();
    let mut tasks: Vec<&str> = lines.iter().map(|(t, _)| *t).collect();
    tasks.sort();
    tasks.dedup();
    assert_eq!(tasks.len(), 8);
    assert_eq!(lines.len(), 8, "each task ran once: {text}");
    let workers: std::collections::BTreeSet<&str> = lines.iter().map(|(_, w)| *w).collect();
    assert_eq!(workers.len(), 2, "the new worker took some of the queued tasks: {text}");
}

#[test]
fn explain_says_why_a_task_waits() {
    // No worker: tasks wait in the queue, or for their dependencies.
    let cluster = Cluster::scheduler_with_config(Some(CONFIG));
    let graph = json!([
        {"key": "a", "fn": "inc", "args": 1},
        {"key": "b", "fn": "inc", "deps": ["a"]},
        {"key": "gpu", "fn": "inc", "args": 1, "resources": {"gpus": 4}},
    ]);
    let job = submit_graph(&cluster, "g.json", &graph);
    let explain = |key: &str| stdout(&cluster.run(&["ctl", "explain", &job, key]));
    assert_eq!(explain("b"), "task b waits for 1 unfinished dependencies: a");
    assert_eq!(explain("a"), "task a is ready; no worker is registered");
    let out = cluster.run(&["ctl", "explain", &job, "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no task \"nope\""), "{}", stderr(&out));
    assert_eq!(explain("gpu"), "task gpu is ready; no worker is registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_passes_futures_as_arguments_and_builds_graphs() {
    use actord::client::{Client, Graph};
    let cluster = Cluster::start_with_config(2, 1, CONFIG);
    let mut client = Client::connect(&cluster.file, Duration::from_secs(30)).await.unwrap();
    // As in Dask: x = submit(inc, 1); y = submit(add, 10, x) → add([10, 2]).
    let x = client.submit("inc", &1i64).await.unwrap();
    let y = client.submit_after("add", &10i64, &[&x]).await.unwrap();
    assert_eq!(client.result::<i64>(&y).await.unwrap(), 12);
    assert_eq!(client.result::<i64>(&x).await.unwrap(), 2);

    let mut g = Graph::new();
    g.add("a", "inc", &1i64, &[]).unwrap();
    g.add("b", "inc", &(), &["a"]).unwrap().priority = 3;
    let job = client.submit_graph("g", g).await.unwrap();
    let results: Vec<i64> = client.gather(&job).await.unwrap().values().unwrap();
    assert_eq!(results, vec![2, 3]);
    let mut stream = client.as_completed(job.id).await.unwrap();
    let mut seen = 0;
    while let Some(o) = stream.next().await.unwrap() {
        assert!(o.outcome.is_ok());
        seen += 1;
    }
    assert_eq!(seen, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_the_frame_limit_is_refused_at_once_and_the_client_goes_on() {
    use actord::client::{Client, Graph};
    let cluster = Cluster::start_with_config(1, 1, CONFIG);
    let mut client = Client::connect(&cluster.file, Duration::from_secs(30)).await.unwrap();
    let mut g = Graph::new();
    let blob = serde_bytes::ByteBuf::from(vec![7u8; (64 << 20) + 1]);
    g.add("huge", "inc", &blob, &[]).unwrap();
    // Refused as it is sent, not retried for good as if the connection dropped.
    let refused = tokio::time::timeout(Duration::from_secs(60), client.submit_graph("huge", g))
        .await
        .expect("the submission ends");
    let error = refused.expect_err("over the frame limit").to_string();
    assert!(error.contains("job \"huge\" does not fit in one message"), "{error}");
    assert!(error.contains("over the frame limit of 64.0 MiB"), "{error}");
    let x = client.submit("inc", &1i64).await.unwrap();
    assert_eq!(client.result::<i64>(&x).await.unwrap(), 2);
}
