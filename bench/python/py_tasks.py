#!/usr/bin/env python3
"""py-task throughput and latency on a real cluster, through the wire
protocol alone (no client library): what the scheduler, the workers and the
Python executors cost per task. Starts a scheduler and a nanny (journal on),
runs the workload, stops them by pid; prints one JSON line per run with the
fields of peers/dask.

  bench/python/py_tasks.py --actord target/release/actord --variant map --n 10000
  bench/python/py_tasks.py --actord target/release/actord --variant chain --n 2000
"""

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(ROOT, "tests", "python"), os.path.join(ROOT, "python")]

from rawclient import Raw, Dep  # noqa: E402
import msgpack  # noqa: E402
import actord._payload as payload  # noqa: E402


def inc(x):
    return x + 1


def cpu_of(pid):
    """User + system CPU seconds of a process and its children (from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = sum(int(x) for x in fields[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def submit_raw(r, tasks, functions):
    """Like Raw.submit, but pickles plain arguments with pickle (the client
    library's cost is not what this measures)."""
    import uuid

    job = uuid.uuid4().bytes
    specs = []
    for func, args, deps in tasks:
        spec = {"kind": {"Py": {"func": func, "args": pickle.dumps((args, {}), protocol=5)}}}
        if deps:
            spec["deps"] = [{"job": None, "key": str(d)} for d in deps]
        specs.append(spec)
    r.send({"Submit": {"job": job, "name": "bench", "tasks": specs,
                       "functions": [payload.dumps(f) for f in functions]}})
    reply = r.recv()
    assert "Submitted" in reply, reply
    return job


def gather_raw(r, job, n):
    r.send({"Watch": {"job": job}})
    results = [None] * n
    while True:
        m = r.recv()
        if "Outcomes" in m:
            for o in m["Outcomes"]["outcomes"]:
                out = o["outcome"]
                assert "Ok" in out, out
                results[o["idx"]] = pickle.loads(msgpack.unpackb(out["Ok"]["result"]))
        elif "JobDone" in m:
            return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--actord", default=os.path.join(ROOT, "target", "release", "actord"))
    p.add_argument("--python", default=sys.executable, help="the executors' interpreter")
    p.add_argument("--variant", choices=["map", "chain"], default="map")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    d = tempfile.mkdtemp(prefix="actord-pybench-")
    sf = os.path.join(d, "scheduler.json")
    env = dict(os.environ, ACTORD_LOG="warn")
    log = open(os.path.join(d, "log"), "w")
    sched = subprocess.Popen([a.actord, "scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file", sf,
                              "--journal", os.path.join(d, "journal")], stdout=log, stderr=log, env=env)
    nanny = None
    try:
        nanny = subprocess.Popen([a.actord, "nanny", "--scheduler-file", sf, "--workers", str(a.workers),
                                  "--threads", str(a.threads), "--python", a.python], stdout=log, stderr=log, env=env)
        subprocess.run([a.actord, "wait", "--scheduler-file", sf, "--workers", str(a.workers), "--timeout", "60s"],
                       check=True, env=env)
        r = Raw(sf)
        # Warm up: every slot starts its executor before anything is timed.
        warm = submit_raw(r, [(0, (i,), None) for i in range(50 * a.workers * a.threads)], [inc])
        gather_raw(r, warm, 50 * a.workers * a.threads)
        for _ in range(a.repeat):
            c0 = cpu_of(sched.pid)
            w0 = cpu_of(nanny.pid) + sum(cpu_of(int(x)) for x in children_of(nanny.pid))
            t0 = time.perf_counter()
            if a.variant == "map":
                job = submit_raw(r, [(0, (i,), None) for i in range(a.n)], [inc])
                res = gather_raw(r, job, a.n)
                assert sum(res) == a.n * (a.n + 1) // 2, "wrong map result"
            else:
                tasks = [(0, (0,), None)] + [(0, (Dep(0),), [i - 1]) for i in range(1, a.n)]
                job = submit_raw(r, tasks, [inc])
                res = gather_raw(r, job, a.n)
                assert res[-1] == a.n, f"wrong chain result {res[-1]}"
            wall = time.perf_counter() - t0
            w1 = cpu_of(nanny.pid) + sum(cpu_of(int(x)) for x in children_of(nanny.pid))
            print(json.dumps({
                "system": "actord", "workload": "py-noop", "variant": a.variant, "n": a.n,
                "workers": a.workers, "threads_per_worker": a.threads, "wall_s": round(wall, 4),
                "tasks_per_s": round(a.n / wall, 1), "us_per_task": round(wall / a.n * 1e6, 1),
                "sched_cpu_s": round(cpu_of(sched.pid) - c0, 3), "workers_cpu_s": round(w1 - w0, 3),
            }), flush=True)
    finally:
        for proc in (nanny, sched):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def children_of(pid):
    """Every descendant pid of `pid` (workers and their executors)."""
    out = []
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return out
    for k in kids:
        out.append(k)
        out.extend(children_of(int(k)))
    return out


if __name__ == "__main__":
    main()
