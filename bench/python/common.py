"""Shared helpers for the Dask peer-benchmark workloads (the actord port:
only the import, connection and record-keeping lines differ from peers/dask).

Every workload connects with Client(scheduler_file=...), waits until the
expected number of workers has registered (bounded), times only the work
itself, and prints exactly one JSON line on stdout.  Human-readable chatter
goes to stderr.  run.sh exports BENCH_* variables that are folded into the
JSON line so the record is self-describing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time


def log(*a) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler-file", default=os.environ.get("BENCH_SCHEDULER_FILE"),
                   help="scheduler JSON written by `dask scheduler --scheduler-file` "
                        "(default: $BENCH_SCHEDULER_FILE)")
    p.add_argument("--expect-workers", type=int,
                   default=int(os.environ.get("BENCH_WORKERS", "1")),
                   help="wait until this many workers are registered (default: $BENCH_WORKERS or 1)")
    p.add_argument("--wait-timeout", type=float, default=60.0,
                   help="seconds to wait for workers before giving up")


def connect(args):
    from actord import Client

    if not args.scheduler_file:
        sys.exit("no --scheduler-file and BENCH_SCHEDULER_FILE unset")
    t0 = time.perf_counter()
    client = Client(scheduler_file=args.scheduler_file, timeout="30s")
    client.wait_for_workers(args.expect_workers, timeout=args.wait_timeout)
    log(f"connected to {client.address}; "
        f"{len(client.scheduler_info(n_workers=-1)['workers'])} workers "
        f"({time.perf_counter() - t0:.2f}s)")
    return client


def cluster_shape(client) -> dict:
    import dask
    ws = client.scheduler_info(n_workers=-1)["workers"]
    return {"workers": len(ws), "threads_per_worker": sorted({w["nthreads"] for w in ws.values()}),
            "total_threads": sum(w["nthreads"] for w in ws.values()),
            # read on the scheduler itself (functions from this module would be
            # pickled by reference, and the scheduler cannot import `common`)
            "worker_saturation": "n/a"}  # a Dask scheduler setting


def versions() -> dict:
    import actord
    return {"actord": actord.__version__, "python": platform.python_version()}


def emit(record: dict) -> None:
    """Print the one machine-readable line, enriched with run.sh's context."""
    env = {
        "workers": os.environ.get("BENCH_WORKERS"),
        "threads_per_worker": os.environ.get("BENCH_THREADS"),
        "cluster_startup_s": os.environ.get("BENCH_STARTUP_S"),
    }
    out = {"system": "actord-py"}
    for k, v in env.items():
        if v not in (None, ""):
            out[k] = float(v) if k.endswith("_s") else int(v)
    out.update(record)
    out.update(versions())
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["client_cpu_s"] = round(ru.ru_utime + ru.ru_stime, 3)
    out["host"] = {"cpus": os.cpu_count(), "platform": platform.platform(terse=True),
                   "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}
    out["ts"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(out, sort_keys=False), flush=True)
