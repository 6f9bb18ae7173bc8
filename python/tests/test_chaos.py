"""Real processes killed with real signals: the scheduler during a py map
(gather rides it out, nothing runs twice), an executor mid-task (the task
runs again), a task that kills its executor every time (a poison task)."""

from __future__ import annotations

import collections
import os
import signal
import sys
import time

import cloudpickle
import pytest

from conftest import wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def marked(path, i, seconds):
    with open(path, "a") as fh:
        fh.write(f"start {i}\n")
    time.sleep(seconds)
    with open(path, "a") as fh:
        fh.write(f"end {i}\n")
    return i * i


def marks(path):
    try:
        lines = open(path).read().split("\n")
    except FileNotFoundError:
        return collections.Counter()
    return collections.Counter(line for line in lines if line)


def ended(path):
    return sum(1 for k in marks(path) if k.startswith("end"))


def test_scheduler_kill_during_map_gather_completes_nothing_twice(make_cluster):
    cluster = make_cluster(workers=2, threads=1)
    path = str(cluster.tmp / "marks")
    n = 24
    with cluster.client() as client:
        futures = client.map(marked, [path] * n, range(n), [0.4] * n)
        wait_until(lambda: ended(path) >= 6, 60, "six tasks to finish")
        c = marks(path)
        running = sum(c[f"start {i}"] - c[f"end {i}"] for i in range(n))
        assert running > 0, "the kill should land while tasks run"
        old_port = cluster.read_sf()["address"]
        cluster.kill_scheduler()
        cluster.start_scheduler()
        assert cluster.read_sf()["address"] != old_port
        assert client.gather(futures) == [i * i for i in range(n)]
        assert client.address == cluster.read_sf()["address"]
    c = marks(path)
    for i in range(n):
        assert c[f"start {i}"] == 1 and c[f"end {i}"] == 1, (i, c, cluster.logs())


def test_submit_while_the_scheduler_is_down_is_resubmitted(make_cluster):
    cluster = make_cluster(workers=2, threads=1)
    with cluster.client() as client:
        assert client.submit(pow, 2, 5).result(30) == 32
        cluster.kill_scheduler()
        futures = client.map(pow, range(10), [2] * 10)
        cluster.start_scheduler()
        assert client.gather(futures) == [i * i for i in range(10)]


def suicide_once(path):
    if not os.path.exists(path):
        with open(path, "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(120)
        return "first"
    return "again"


def always_exit():
    os._exit(3)


def test_executor_killed_mid_task_runs_again(client, tmp_path):
    path = tmp_path / "pid"
    f = client.submit(suicide_once, str(path))
    pid = int(wait_until(lambda: path.exists() and path.read_text(), 60, "the task to start"))
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    assert f.result(60) == "again"
    assert f._state.attempts >= 2
    assert client.gather(client.map(pow, range(5), [2] * 5)) == [0, 1, 4, 9, 16]


def test_task_that_kills_its_executor_every_time_is_a_poison_task(client):
    f = client.submit(always_exit)
    g = client.submit(pow, 3, 2)
    with pytest.raises(Exception, match="executor"):
        f.result(120)
    assert g.result(30) == 9
