"""Large results through the results store: dask.array chunks over
`worker.inline_result` travel as files, never through the scheduler, and
`result`/`gather` read them back transparently (or streamed where the store
is not visible)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import msgpack
import pytest

da = pytest.importorskip("dask.array")
np = pytest.importorskip("numpy")

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def big(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(256)) * (n // 256)


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def stored_files(cluster) -> list:
    return sorted(p for p in (cluster.journal / "results").glob("*/*.bin"))


def test_dask_array_chunks_go_through_the_store_not_the_scheduler(cluster, client):
    # 8 chunks of 8 MB; x @ x.T is the sum of 8 blocks of 8 MB more.
    x = da.random.default_rng(7).random((1024, 8 * 1024), chunks=(1024, 1024))
    y = (x @ x.T).sum()
    xn = x.compute(scheduler="sync")
    expected = float((xn @ xn.T).sum())
    got = float(y.compute(scheduler=client.get))
    assert got == pytest.approx(expected, rel=1e-9)
    sizes = sorted((f.stat().st_size for f in stored_files(cluster)), reverse=True)
    assert len(sizes) >= 16 and sizes[15] > 8 << 20, sizes  # the chunks and the blocks, at least
    hwm = vm_hwm_mib(cluster.scheduler.pid)
    assert hwm < 100, f"scheduler peak RSS {hwm:.0f} MiB"


def test_result_and_gather_read_stored_results_from_the_store_or_streamed(cluster, client, monkeypatch):
    futures = [client.submit(big, 3 << 20, s, pure=False) for s in range(3)]
    assert futures[0].result(timeout=60) == big(3 << 20, 0)
    assert client.gather(futures) == [big(3 << 20, s) for s in range(3)]
    assert len(stored_files(cluster)) == 3
    # A host that cannot see the store gets them streamed through the scheduler.
    monkeypatch.setenv("ACTORD_RESULTS_DIR", str(cluster.tmp / "elsewhere"))
    with cluster.client() as other:
        f = other.submit(big, 3 << 20, 1)  # the same key: the same task, finished already
        assert f.result(timeout=60) == big(3 << 20, 1)


def test_a_damaged_stored_result_is_computed_again_never_returned(cluster, client):
    from actord import wait

    f = client.submit(big, 2 << 20, 5, pure=False)
    g = client.submit(big, 2 << 20, 6, pure=False)
    wait([f, g], timeout=60)  # finished, not read yet
    paths = stored_files(cluster)
    assert len(paths) == 2
    data = bytearray(paths[0].read_bytes())
    data[len(data) // 2] ^= 1
    paths[0].write_bytes(bytes(data))
    paths[1].unlink()
    # Found by the reader, checked by the scheduler, run again: the right values.
    assert client.gather([f, g]) == [big(2 << 20, 5), big(2 << 20, 6)]
    log = cluster.logs()
    assert log.count("is corrupt/missing: re-running") == 2, log
    assert len([p for p in stored_files(cluster) if p.name.endswith("-2.bin")]) == 2, "second attempts, stored"


class Marked:
    """A large value that knows whether it was unpickled, and where it was made."""

    def __init__(self, n: int):
        self.payload = big(n, 1)
        self.pid = os.getpid()
        self.unpickled = False

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.unpickled = True


def make_marked(n: int) -> Marked:
    return Marked(n)


def how_received(m: Marked):
    return (m.unpickled, m.pid == os.getpid(), len(m.payload))


@pytest.mark.parametrize("cache", [None, 0])
def test_a_consumer_on_its_producers_executor_takes_the_object_itself(make_cluster, cache):
    c = make_cluster(workers=1, start=False)
    flags = ()
    if cache is not None:
        (c.tmp / "actord.toml").write_text(f"[worker]\nresult_cache = {cache}\n")
        flags = ("--config", str(c.tmp / "actord.toml"))
    c.start_scheduler()
    c.start_nanny(*flags)
    with c.client() as client:
        m = client.submit(make_marked, 2 << 20, pure=False)
        got = client.submit(how_received, m).result(timeout=60)
        # The object itself (the executor kept it) or, with no cache, a copy from the store.
        assert got == ((True, True, 2 << 20) if cache == 0 else (False, True, 2 << 20)), got
        # Either way the result is in the store, written by the executor, owner-only.
        (path,) = stored_files(c)
        assert path.stat().st_mode & 0o077 == 0
        data = path.read_bytes()
        value = cloudpickle.loads(msgpack.unpackb(data))
        assert value.unpickled and len(value.payload) == 2 << 20
        # The client reads it from the store, checking the reported SHA-256.
        assert m.result(timeout=60).payload == big(2 << 20, 1)


def double_in_place_failing_first(x):
    x *= 2
    if os.environ["ACTORD_ATTEMPT"] == "1":
        raise RuntimeError("first attempt")
    return x[:3].tolist()


def test_a_retried_task_gets_its_inputs_as_stored_not_as_its_first_attempt_left_them(make_cluster):
    c = make_cluster(workers=1)
    with c.client() as client:
        x = client.submit(np.arange, 300_000, dtype=np.float64, pure=False)
        y = client.submit(double_in_place_failing_first, x, retries=1)
        assert y.result(timeout=60) == [0.0, 2.0, 4.0]
