#!/usr/bin/env python3
"""Monte Carlo pi ("throw darts"), the NERSC Dask tutorial workload.

The task is the tutorial's, unchanged:

    def throw_darts(args):
        darts, seed = args
        random.seed(seed)
        ...count x*x + y*y < 1.0 over `darts` uniform points...

mapped with client.map over 100 inputs

    (max(1000000, int(random.expovariate(1.0/10000000.0))), i + 192837465)

and gathered.  Flags scale it down: --inputs changes the 100, --scale
multiplies both 1000000 (the floor) and 10000000 (the mean).  The inputs are
drawn from random.Random(--input-seed) so two runs with the same flags do
exactly the same work (the tutorial drew them unseeded; --input-seed none
restores that).  With the default flags a run is ~1e9 darts (about a minute
on 2 cores); --scale 0.01 takes a few seconds.

Every task is seeded, but under Dask the per-task results are NOT
bit-reproducible with the tutorial's random.seed(): the worker's event-loop
thread also draws from the global generator (dask.sizeof -> random.sample), so
a few draws are stolen mid-task.  --rng private uses random.Random(seed) per
task and is bit-reproducible; chaos.sh checks results both statistically and,
with RNG=private, bit-for-bit against an undisturbed run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

SchedulerPlugin = object  # actord's scheduler runs no Python plugins (--count-executions is Dask's)

from common import add_cluster_args, cluster_shape, connect, emit, log


def throw_darts(args):
    darts, seed = args
    random.seed(seed)
    in_circle = 0
    for _ in range(darts):
        x = random.random()
        y = random.random()
        if x * x + y * y < 1.0:
            in_circle += 1
    return in_circle, darts


def throw_darts_private(args):
    """Same computation with a task-private generator (--rng private).

    The tutorial's random.seed() reseeds the process-global generator, which
    other threads of a Dask worker also draw from (dask.sizeof calls
    random.sample on the event-loop thread), so its per-task results are not
    bit-reproducible under distributed.  This variant is.
    """
    darts, seed = args
    rng = random.Random(seed)
    in_circle = 0
    for _ in range(darts):
        x = rng.random()
        y = rng.random()
        if x * x + y * y < 1.0:
            in_circle += 1
    return in_circle, darts


def make_inputs(n_inputs: int, scale: float, input_seed):
    rng = random.Random(input_seed) if input_seed is not None else random.Random()
    floor = max(1, int(1000000 * scale))
    mean = 10000000.0 * scale
    return [(max(floor, int(rng.expovariate(1.0 / mean))), i + 192837465) for i in range(n_inputs)]


class CountExecutions(SchedulerPlugin):
    """Scheduler plugin (opt-in): counts how often each key finished, to see recomputation."""

    name = "bench-count-executions"

    def __init__(self):
        self.done = {}
        self.erred = 0

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "memory" and start == "processing":
            self.done[key] = self.done.get(key, 0) + 1
        elif finish == "erred":
            self.erred += 1


def _plugin_counts(dask_scheduler, name):
    p = dask_scheduler.plugins.get(name)
    if p is None:
        return None
    return {"executions": sum(p.done.values()), "keys": len(p.done),
            "recomputed": sum(v - 1 for v in p.done.values()), "erred": p.erred}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cluster_args(p)
    p.add_argument("--inputs", type=int, default=100, help="number of tasks (tutorial: 100)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the dart counts (tutorial: 1.0)")
    p.add_argument("--input-seed", default="1",
                   help="seed for drawing the inputs ('none' = unseeded, like the tutorial)")
    p.add_argument("--out", default="darts-result.json", help="where to write the result JSON")
    p.add_argument("--progress", default=None,
                   help="append one JSON line per finished task here (for chaos.sh)")
    p.add_argument("--rng", choices=["global", "private"], default="global",
                   help="global = tutorial's random.seed() (default); private = random.Random(seed) "
                        "per task, bit-reproducible")
    p.add_argument("--count-executions", action="store_true",
                   help="install a scheduler plugin that counts (re)executions")
    args = p.parse_args(argv)
    seed = None if args.input_seed.lower() == "none" else int(args.input_seed)

    inputs = make_inputs(args.inputs, args.scale, seed)
    total_darts = sum(d for d, _ in inputs)
    log(f"{len(inputs)} inputs, {total_darts:,} darts total")

    client = connect(args)
    rec = {"workload": "darts", "n": len(inputs), "tasks": len(inputs), "scale": args.scale,
           "input_seed": seed, "rng": args.rng, "darts": total_darts}
    error = None
    t0 = time.perf_counter()
    t_first = None
    try:
        if args.count_executions:
            client.register_plugin(CountExecutions(), name=CountExecutions.name)
        t0 = time.perf_counter()
        func = throw_darts if args.rng == "global" else throw_darts_private
        futures = client.map(func, inputs)
        if args.progress:
            from actord import as_completed
            with open(args.progress, "a") as fh:
                fh.write(json.dumps({"t": time.time(), "done": 0, "event": "submitted"}) + "\n")
                fh.flush()
                for k, fut in enumerate(as_completed(futures), 1):
                    fh.write(json.dumps({"t": time.time(), "done": k, "key": str(fut.key),
                                         "status": fut.status}) + "\n")
                    fh.flush()
        results = client.gather(futures)
        wall = time.perf_counter() - t0
        if args.count_executions:
            rec["executions"] = client.run_on_scheduler(_plugin_counts, name=CountExecutions.name)
        shape = cluster_shape(client)
    except BaseException as e:  # record *what* the client saw, then re-raise
        error = e
        wall = time.perf_counter() - t0
        rec.update(status="failed", wall_s=round(wall, 3),
                   error_type=f"{type(e).__module__}.{type(e).__qualname__}", error=str(e)[:500],
                   client_status=str(getattr(client, "status", None)))
        with open(args.out, "w") as fh:
            json.dump(rec, fh, indent=1)
        emit(rec)
        raise
    finally:
        if error is None or not isinstance(error, KeyboardInterrupt):
            client.close(timeout=10)

    in_circle = sum(r[0] for r in results)
    assert sum(r[1] for r in results) == total_darts, "dart count mismatch"
    pi = 4.0 * in_circle / total_darts
    rec.update(
        status="ok",
        workers=shape["workers"],
        threads_per_worker=shape["threads_per_worker"][0],
        worker_saturation=shape["worker_saturation"],
        wall_s=round(wall, 3),
        tasks_per_s=round(len(inputs) / wall, 3),
        darts_per_s=round(total_darts / wall),
        pi=pi,
        pi_abs_err=abs(pi - 3.141592653589793),
        in_circle=in_circle,
    )
    with open(args.out, "w") as fh:
        json.dump({**rec, "inputs": inputs, "results": results}, fh)
    log(f"pi ~= {pi:.6f} from {total_darts:,} darts in {wall:.2f}s -> {args.out}")
    emit(rec)


if __name__ == "__main__":
    sys.exit(main())
