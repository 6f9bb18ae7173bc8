"""The futures API against a real cluster: submit, map, gather, as_completed,
wait, Future, pure keys, futures in arguments, errors, bad input."""

from __future__ import annotations

import os
import sys
import threading
import time

import cloudpickle
import pytest

import actord
from actord import FutureCancelledError, RemoteTraceback, ResultError, as_completed, wait
from conftest import wait_until

# The workers cannot import this module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def add(a, b=0):
    return a + b


def total(tree):
    if isinstance(tree, dict):
        return sum(total(v) for v in tree.values())
    if isinstance(tree, (list, tuple, set)):
        return sum(total(v) for v in tree)
    return tree


def mark(path, x):
    with open(path, "a") as fh:
        fh.write(f"{x}\n")
    return x


def slow(x, seconds):
    time.sleep(seconds)
    return x


class Oops(Exception):
    pass


def fail_with(kind, message):
    def inner():
        raise kind(message)
    inner()


def _explode(*_):
    raise RuntimeError("this object cannot be rebuilt here")


class Unloadable:
    def __reduce__(self):
        return (_explode, ())


def make_unloadable():
    return Unloadable()


def flaky(path):
    n = len(open(path).read()) if os.path.exists(path) else 0
    with open(path, "a") as fh:
        fh.write("x")
    if n == 0:
        raise ValueError("first attempt fails")
    return n


def test_submit_map_gather(client):
    f = client.submit(inc, 1)
    assert f.result(30) == 2
    assert f.status == "finished" and f.done() and f.key.startswith("inc-")
    fs = client.map(add, range(100), range(100))
    assert client.gather(fs) == [2 * i for i in range(100)]
    assert client.gather(client.map(add, range(5), b=10)) == [10, 11, 12, 13, 14]
    fs = client.map(inc, range(1000, 1050), batch_size=7)
    assert len({f._state.job for f in fs}) == 8, "batch_size splits the map into jobs"
    assert client.gather({"a": fs[:3], "b": (fs[3], {fs[4]})}) == {"a": [1001, 1002, 1003], "b": (1004, {1005})}


def _thread_pools():
    return [os.environ.get(n) for n in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")]


def test_numerical_thread_pools_get_one_thread_per_slot(client):
    # As Dask's nanny does: a value the worker was given wins.
    want = [os.environ.get(n, "1") for n in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")]
    assert client.submit(_thread_pools, pure=False).result(30) == want


def test_pure_keys_run_once_and_pure_false_runs_again(client, tmp_path):
    marks = tmp_path / "marks"
    a, b = client.submit(mark, str(marks), 1), client.submit(mark, str(marks), 1)
    assert a.key == b.key
    fs = client.map(mark, [str(marks)] * 3, [2, 2, 3])
    assert fs[0].key == fs[1].key != fs[2].key
    c, d = client.submit(mark, str(marks), 4, pure=False), client.submit(mark, str(marks), 4, pure=False)
    assert c.key != d.key
    assert client.gather([a, b, fs, c, d]) == [1, 1, [2, 2, 3], 4, 4]
    assert sorted(marks.read_text().split()) == ["1", "2", "3", "4", "4"]
    assert client.submit(inc, 1, key="mine").key == "mine"


def test_futures_inside_arguments_become_dependencies(client):
    x, y = client.submit(inc, 1), client.submit(inc, 10)
    z = client.submit(total, {"a": [x, (y, 5)], "b": {x}, "c": x})
    assert z.result(30) == 2 + 11 + 5 + 2 + 2
    assert client.submit(add, x, b=y).result(30) == 13
    chain = client.submit(inc, 0)
    for _ in range(20):
        chain = client.submit(inc, chain)
    assert chain.result(30) == 21
    assert client.gather(client.map(add, [x, y], [y, x])) == [13, 13]


def test_errors_raise_the_same_type_with_the_remote_traceback(client):
    f = client.submit(fail_with, ValueError, "bad value")
    with pytest.raises(ValueError, match="bad value") as info:
        f.result(30)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "inner" in info.value.__cause__.tb and "fail_with" in info.value.__cause__.tb
    assert f.status == "error" and isinstance(f.exception(), ValueError)
    assert "in inner" in f.traceback()
    g = client.submit(fail_with, Oops, "custom")
    with pytest.raises(Oops, match="custom"):
        g.result(30)
    dependent = client.submit(inc, f)
    with pytest.raises(ValueError, match="bad value"):
        dependent.result(30)
    with pytest.raises(ValueError):
        client.gather([client.submit(inc, 1), f])


def test_gather_skip_leaves_failed_futures_out(client):
    ok, bad = client.submit(inc, 1), client.submit(fail_with, KeyError, "k")
    assert client.gather([ok, bad, ok], errors="skip") == [2, 2]
    assert client.gather({"ok": ok, "bad": bad}, errors="skip") == {"ok": 2}
    with pytest.raises(ValueError):
        client.gather([ok], errors="ignore")


def test_as_completed_and_wait(client):
    fs = [client.submit(slow, i, 0.6 - 0.2 * i, pure=False) for i in range(3)]
    seen = [f.result() for f in as_completed(fs)]
    assert sorted(seen) == [0, 1, 2]
    pairs = list(as_completed(client.map(inc, range(10)), with_results=True))
    assert sorted(r for _, r in pairs) == list(range(1, 11))
    quick, long = client.submit(inc, 5), client.submit(slow, 1, 3, pure=False)
    done, not_done = wait([quick, long], return_when="FIRST_COMPLETED")
    assert quick in done and long in not_done
    with pytest.raises(TimeoutError):
        wait([long], timeout=0.2)
    with pytest.raises(TimeoutError):
        long.result(timeout=0.1)
    done, not_done = wait([quick, long])
    assert done == {quick, long} and not not_done
    bad = client.submit(fail_with, ValueError, "x")
    done, _ = wait([bad, client.submit(slow, 2, 5, pure=False)], return_when="FIRST_EXCEPTION")
    assert bad in done
    called = threading.Event()
    quick.add_done_callback(lambda fut: called.set())
    assert called.wait(5)


def started(path, seconds):
    open(path, "w").close()
    time.sleep(seconds)
    return seconds


def test_cancel(client, tmp_path):
    assert client.gather(client.map(inc, range(4))) == [1, 2, 3, 4]
    path = tmp_path / "started"
    f = client.submit(started, str(path), 30, pure=False)
    g = client.submit(inc, f)
    wait_until(path.exists, 30, "the task to start")
    f.cancel()
    assert f.status == "cancelled" and f.cancelled()
    with pytest.raises(FutureCancelledError):
        f.result(5)
    with pytest.raises(Exception):
        g.result(30)
    assert client.submit(inc, 100).result(30) == 101


def _loaded(name):
    return name in sys.modules


def test_preloaded_executors_start_with_their_worker(make_cluster):
    cluster = make_cluster(start=False)
    cluster.start_scheduler()
    cluster.start_nanny("--preload", "colorsys,no_such_module_xyz")
    # A worker registers once its executors are up (start_nanny waited for
    # the registrations): each says what failed to import.
    log = lambda: (cluster.tmp / "nanny.log").read_text(errors="replace")
    assert log().count("Python executor started") == 2, log()
    assert log().count("a preload failed") == 2, log()
    assert log().count("Python executors ready: connecting") == 2, log()
    assert "No module named 'no_such_module_xyz'" in log()
    with cluster.client() as c:
        assert c.gather(c.map(_loaded, ["colorsys"] * 4, pure=False)) == [True] * 4
    assert log().count("Python executor started") == 2, "the tasks ran in the preloaded executors"


def test_cancel_before_the_executor_is_up(make_cluster):
    # A fresh cluster: the first py task starts each slot's executor, and a
    # cancel arriving meanwhile must still stop the task, not leave it
    # running with its slot held.
    cluster = make_cluster(workers=1)
    with cluster.client() as client:
        f = client.submit(time.sleep, 30, pure=False)
        f.cancel()
        with pytest.raises(FutureCancelledError):
            f.result(5)
        start = time.monotonic()
        assert client.submit(inc, 1).result(20) == 2
        assert time.monotonic() - start < 20


def test_bad_input_is_a_clear_error_and_changes_nothing(client):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot pickle function 'uses_lock'"):
        def uses_lock():
            return lock.locked()
        client.submit(uses_lock)
    with pytest.raises(TypeError, match="cannot pickle the arguments of inc"):
        client.submit(inc, lock)
    with pytest.raises(TypeError, match="not callable"):
        client.map(5, [1])
    bad = client.submit(make_unloadable)
    good = client.submit(inc, 41)
    with pytest.raises(ResultError, match=bad.key):
        bad.result(30)
    assert good.result(30) == 42
    assert client.gather(client.map(inc, range(3))) == [1, 2, 3]


def test_retries(client, tmp_path):
    f = client.submit(flaky, str(tmp_path / "count"), retries=1, pure=False)
    assert f.result(30) == 1


def test_finds_the_scheduler_file_like_the_cli(cluster, monkeypatch):
    monkeypatch.setenv("CLUSTER_DIR", str(cluster.tmp))
    monkeypatch.setenv("ACTORD_SCHEDULER_FILE", "$CLUSTER_DIR/scheduler.json")
    with actord.Client() as c:
        assert c.submit(inc, 1).result(30) == 2
        assert len(c.scheduler_info()["workers"]) == 2
    with actord.Client(scheduler_file="${CLUSTER_DIR}/scheduler.json", timeout="5s") as c:
        c.wait_for_workers(2, timeout=10)
    monkeypatch.delenv("ACTORD_SCHEDULER_FILE")
    monkeypatch.setenv("SCRATCH", str(cluster.tmp / "nowhere"))
    with pytest.raises(actord.ConnectError, match="nowhere/actord/scheduler.json"):
        actord.Client(timeout=0.2)


def test_a_time_request_travels_with_the_task(client):
    from actord._submit import JobBuilder
    b = JobBuilder(client, "inc")
    b.add(inc, (1,), {}, None, True, "inc", time_request=90)
    assert b.specs[0]["time_request_ms"] == 90_000
    plain = JobBuilder(client, "inc")
    plain.add(inc, (1,), {}, None, True, "inc")
    assert "time_request_ms" not in plain.specs[0], "left out when not asked for"
    # Workers without an allocation end take any request.
    assert client.submit(inc, 1, time_request=3600).result(30) == 2
    assert client.gather(client.map(inc, [1, 2], time_request=0.5)) == [2, 3]
    with pytest.raises(ValueError, match="time_request"):
        client.submit(inc, 5, time_request=-1)
