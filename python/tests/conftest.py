"""Fixtures: a real actord cluster (scheduler + nanny) on 127.0.0.1, port 0, in
a temp dir per test; every process is killed by pid at teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The tutorial's script is run by test_seed.py as a program, not collected.
collect_ignore = ["seed"]


def actord_bin() -> str:
    env = os.environ.get("ACTORD_BIN")
    if env:
        return env
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "actord"
        if p.exists():
            return str(p)
    pytest.fail("no actord binary: run `cargo build` first or set ACTORD_BIN")


def wait_until(cond, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Cluster:
    """A scheduler with a journal and a nanny with `workers` × `threads` slots."""

    def __init__(self, tmp: Path, workers: int = 2, threads: int = 1, flags: tuple = ()):
        self.tmp = tmp
        self.flags = tuple(flags)  # extra scheduler flags, e.g. ("--no-tls",)
        self.bin = actord_bin()
        self.sf = tmp / "scheduler.json"
        self.journal = tmp / "journal"
        self.workers = workers
        self.threads = threads
        self.procs: list = []
        self.scheduler = None
        self.nanny = None
        self.env = dict(os.environ, ACTORD_LOG=os.environ.get("ACTORD_LOG", "info"),
                        ACTORD_DASHBOARD=os.environ.get("ACTORD_DASHBOARD", "127.0.0.1:0"),
                        ACTORD_PYTHON=sys.executable)
        self.env.pop("ACTORD_SCHEDULER_FILE", None)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        p = subprocess.Popen([self.bin, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                             cwd=self.tmp, stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append(p)
        return p

    def start_scheduler(self) -> None:
        old = self.read_sf().get("epoch", -1) if self.sf.exists() else -1
        self.scheduler = self._spawn("scheduler", "scheduler", "--scheduler-file", str(self.sf),
                                     "--host", "127.0.0.1", "--port", "0", "--journal", str(self.journal),
                                     *self.flags)
        wait_until(lambda: self.sf.exists() and self.read_sf().get("pid") == self.scheduler.pid
                   and self.read_sf().get("epoch", -1) > old, 30, "the scheduler file")

    def read_sf(self) -> dict:
        try:
            return json.loads(self.sf.read_text())
        except (OSError, ValueError):
            return {}

    def start_nanny(self, *flags: str) -> None:
        self.nanny = self._spawn("nanny", "nanny", "--scheduler-file", str(self.sf), "--workers",
                                 str(self.workers), "--threads", str(self.threads),
                                 "--python", sys.executable, *flags)
        subprocess.run([self.bin, "wait", "--scheduler-file", str(self.sf), "--workers", str(self.workers),
                        "--timeout", "60"], check=True, env=self.env, capture_output=True)

    def kill_scheduler(self) -> None:
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait()

    def client(self, **kw):
        from actord import Client
        return Client(scheduler_file=str(self.sf), **kw)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()


@pytest.fixture
def make_cluster(tmp_path):
    made = []

    def make(workers: int = 2, threads: int = 1, start: bool = True, flags: tuple = ()) -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}", workers, threads, flags)
        c.tmp.mkdir()
        made.append(c)
        if start:
            c.start_scheduler()
            c.start_nanny()
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def cluster(make_cluster):
    return make_cluster()


@pytest.fixture
def client(cluster):
    c = cluster.client()
    yield c
    c.close()
