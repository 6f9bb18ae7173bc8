"""Large results side by side: `(x @ x.T).sum()` of a dask.array of C chunks
of M MiB each (1024 rows, column chunks), on a loopback cluster of 2 workers
× 1 thread, through actord's `client.get` (chunks in the results store) and
through Dask distributed (chunks in worker memory). Starts and stops each
cluster itself (by pid); prints one JSON line per system: wall-clock time of
the compute alone, the value, and the scheduler's peak RSS (VmHWM).

    .venv/bin/python bench/python/large_results.py --chunks 32 --chunk-mib 64 [--no-fuse]
    ACTORD_BIN=target/debug/actord ... --systems actord
    ACTORD_LOG=actord=debug ACTORD_BENCH_LOG=/tmp/a.log ...   keep actord's log
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask

ROOT = Path(__file__).resolve().parents[2]
# `--no-fuse`: Dask's graph optimisation off, so each 64 MiB chunk is a task
# result of its own that moves to its consumer (fused, the random chunks are
# made inside the matmul tasks and only the 8 MiB blocks move).
OPTIMIZE = True
# `--result-sync after|before`: actord's worker.result_sync (None: the default).
RESULT_SYNC = None


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def array(chunks: int, chunk_mib: int):
    import dask.array as da

    cols = chunk_mib * (1 << 20) // 8 // 1024
    x = da.random.default_rng(0).random((1024, chunks * cols), chunks=(1024, cols))
    return (x @ x.T).sum()


def run_actord(tmp: Path, y) -> dict:
    bin_ = os.environ.get("ACTORD_BIN", str(ROOT / "target" / "debug" / "actord"))
    sf = tmp / "scheduler.json"
    env = dict(os.environ, ACTORD_LOG=os.environ.get("ACTORD_LOG", "warn"))
    logs = open(Path(os.environ.get("ACTORD_BENCH_LOG", tmp / "actord.log")), "ab")
    procs = [subprocess.Popen([bin_, "scheduler", "--scheduler-file", str(sf), "--host", "127.0.0.1",
                               "--port", "0", "--journal", str(tmp / "journal")],
                              stdout=logs, stderr=logs, env=env)]
    config = []
    if RESULT_SYNC:
        (tmp / "actord.toml").write_text(f'[worker]\nresult_sync = "{RESULT_SYNC}"\n')
        config = ["--config", str(tmp / "actord.toml")]
    try:
        wait_for(sf.exists, 30, "the scheduler file")
        procs.append(subprocess.Popen([bin_, *config, "nanny", "--scheduler-file", str(sf), "--workers", "2",
                                       "--threads", "1", "--python", sys.executable,
                                       # (Dask's workers have dask imported when they start.)
                                       "--preload", "dask.array"],
                                      stdout=logs, stderr=logs, env=env))
        subprocess.run([bin_, "wait", "--scheduler-file", str(sf), "--workers", "2", "--timeout", "60"],
                       check=True, capture_output=True)
        sys.path.insert(0, str(ROOT / "python"))
        from actord import Client

        with Client(scheduler_file=str(sf), set_as_default=False) as c:
            t0 = time.perf_counter()
            value = float(dask.compute(y, scheduler=c.get, optimize_graph=OPTIMIZE)[0])
            wall = time.perf_counter() - t0
        store = sum(f.stat().st_size for f in (tmp / "journal" / "results").glob("*/*.bin"))
        return {"system": "actord", "wall_s": round(wall, 2), "value": value,
                "scheduler_vmhwm_mib": round(vm_hwm_mib(procs[0].pid), 1), "store_mib": store >> 20}
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def run_dask(tmp: Path, y) -> dict:
    from distributed import Client

    dask_bin = str(Path(sys.executable).with_name("dask"))
    sf = tmp / "dask-scheduler.json"
    logs = open(tmp / "dask.log", "ab")
    procs = [subprocess.Popen([dask_bin, "scheduler", "--scheduler-file", str(sf), "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard"], stdout=logs, stderr=logs)]
    try:
        wait_for(sf.exists, 60, "the Dask scheduler file")
        procs.append(subprocess.Popen([dask_bin, "worker", "--scheduler-file", str(sf), "--nworkers", "2",
                                       "--nthreads", "1", "--memory-limit", "0", "--no-dashboard"],
                                      stdout=logs, stderr=logs))
        with Client(scheduler_file=str(sf), set_as_default=False) as c:
            c.wait_for_workers(2, timeout=120)
            t0 = time.perf_counter()
            value = float(dask.compute(y, scheduler=c.get, optimize_graph=OPTIMIZE)[0])
            wall = time.perf_counter() - t0
        return {"system": "dask", "wall_s": round(wall, 2), "value": value,
                "scheduler_vmhwm_mib": round(vm_hwm_mib(procs[0].pid), 1)}
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--chunk-mib", type=int, default=64)
    ap.add_argument("--systems", default="actord,dask")
    ap.add_argument("--no-fuse", action="store_true")
    ap.add_argument("--result-sync", choices=["before", "after", "never"], help="actord's worker.result_sync")
    a = ap.parse_args()
    global OPTIMIZE, RESULT_SYNC
    OPTIMIZE, RESULT_SYNC = not a.no_fuse, a.result_sync
    y = array(a.chunks, a.chunk_mib)
    for system in a.systems.split(","):
        with tempfile.TemporaryDirectory(prefix=f"large-results-{system}-") as tmp:
            rec = {"actord": run_actord, "dask": run_dask}[system](Path(tmp), y)
            if system == "actord":
                rec.update(result_sync=a.result_sync or "default")
            rec.update(chunks=a.chunks, chunk_mib=a.chunk_mib, fused=OPTIMIZE, cpus=os.cpu_count(),
                       load1=round(os.getloadavg()[0], 1))
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
