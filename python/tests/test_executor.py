"""The Python executor's protocol, spoken to a real `python -m actord.executor`
as its worker would: objects it holds, results it stores itself, and what
it answers when it cannot."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import cloudpickle
import msgpack
import pytest

from actord._payload import Dep

PACKAGE = str(Path(__file__).resolve().parents[1])
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Executor:
    def __init__(self, tmp: Path, objects: int):
        self.tmp = tmp
        env = dict(os.environ, PYTHONPATH=PACKAGE)
        self.err = open(tmp / "scratch.err", "wb")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "actord.executor", "--scratch", str(tmp / "scratch"), "--objects", str(objects)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env)
        assert self.read()[0] == "ready"

    def read(self):
        (n,) = struct.unpack(">I", self.p.stdout.read(4))
        return msgpack.unpackb(self.p.stdout.read(n), raw=False)

    def call(self, fkey, func, args, inputs=(), refs=(), store=None):
        req = [fkey, None if func is None else cloudpickle.dumps(func), pickle.dumps(args), list(inputs),
               str(self.tmp / "t.out"), str(self.tmp / "t.err"), False, ["j", "t", 1, "w"],
               [list(r) for r in refs], store]
        body = msgpack.packb(req, use_bin_type=True)
        self.p.stdin.write(struct.pack(">I", len(body)) + body)
        self.p.stdin.flush()
        return self.read()

    def close(self):
        self.p.kill()
        self.p.wait()
        self.err.close()


@pytest.fixture
def store(tmp_path):
    """An empty results store."""
    d = tmp_path / "store"
    d.mkdir()
    return d


@pytest.fixture
def small(tmp_path):
    """An executor that keeps at most 5 MiB of objects."""
    e = Executor(tmp_path, objects=5 << 20)
    yield e
    e.close()


@pytest.fixture
def executor(tmp_path):
    e = Executor(tmp_path, objects=64 << 20)
    yield e
    e.close()


def payload(n: int) -> bytes:
    return b"x" * n


def test_a_result_over_the_inline_limit_is_stored_by_the_executor(executor, store, tmp_path):
    path = f"{uuid.uuid4()}/5-1.bin"
    ans = executor.call(1, payload, ((3 << 20,), {}), store=[str(store), path, 1 << 20, 0, True])
    assert ans[:2] == [4, path], ans[:2]
    data = (store / path).read_bytes()
    assert ans[2:] == [len(data), hashlib.sha256(data).hexdigest(), True]
    assert pickle.loads(msgpack.unpackb(data)) == payload(3 << 20)
    assert (store / path).stat().st_mode & 0o077 == 0
    assert not [p for p in (store / path).parent.iterdir() if p.name.endswith(".tmp")]
    # A consumer told it holds that result takes the object; nothing is sent.
    ans = executor.call(2, len, ((Dep(0),), {}), inputs=[None], refs=[(0, path, len(data), True)])
    assert ans[0] == 0 and pickle.loads(ans[1]) == 3 << 20
    # A result under the limit is sent, as always.
    ans = executor.call(1, None, ((10,), {}), store=[str(store), path.replace("5-1", "6-1"), 1 << 20, 0, True])
    assert ans[0] == 0 and pickle.loads(ans[1]) == payload(10)


def test_held_inputs_it_does_not_have_are_asked_for_and_nothing_runs(executor):
    ran = executor.tmp / "ran"

    def touch(x):
        ran.write_text("ran")
        return x

    refs = [(0, "a/1-1.bin", 10, True), (1, "a/2-1.bin", 5 << 20, True)]
    ans = executor.call(3, touch, ((Dep(0), Dep(1)), {}), inputs=[None, None], refs=refs)
    assert ans == [3, [0, 1]]
    assert not ran.exists()
    # Sent instead, they are kept: the next task may hold them.
    value = msgpack.packb(pickle.dumps(b"v" * 100), use_bin_type=True)
    ans = executor.call(3, None, ((Dep(0),), {}), inputs=[value], refs=[(0, "a/1-1.bin", 10, False)])
    assert ans[0] == 0 and pickle.loads(ans[1]) == b"v" * 100
    ans = executor.call(2, len, ((Dep(0),), {}), inputs=[None], refs=[(0, "a/1-1.bin", 10, True)])
    assert ans[0] == 0 and pickle.loads(ans[1]) == 100
    # The same path with another size is another result: asked for.
    ans = executor.call(2, None, ((Dep(0),), {}), inputs=[None], refs=[(0, "a/1-1.bin", 11, True)])
    assert ans == [3, [0]]


def test_a_store_it_cannot_write_to_gets_the_result_sent_instead(executor, store, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    path = f"{uuid.uuid4()}/1-1.bin"
    ans = executor.call(1, payload, ((2 << 20,), {}), store=[str(not_a_dir), path, 1 << 20, 0, True])
    assert ans[0] == 0 and pickle.loads(ans[1]) == payload(2 << 20)


def test_objects_past_the_cap_are_let_go_oldest_first(small, store):
    job = uuid.uuid4()
    sizes = {}
    for i in (1, 2, 3):
        path = f"{job}/{i}-1.bin"
        ans = small.call(1, payload, ((2 << 20,), {}), store=[str(store), path, 1 << 20, 0, False])
        assert ans[0] == 4
        sizes[path] = ans[2]
    refs = [(k, p, s, True) for k, (p, s) in enumerate(sizes.items())]
    ans = small.call(2, lambda *a: len(a), ((Dep(0), Dep(1), Dep(2)), {}), inputs=[None] * 3, refs=refs)
    assert ans == [3, [0]], "the first of three 2 MiB results is gone under a 5 MiB cap"


def test_results_are_stored_as_pickle_dumps_would_write_them_large_buffers_uncopied(executor, store, tmp_path):
    np = pytest.importorskip("numpy")
    job = uuid.uuid4()

    def arrays(kind):
        x = np.arange(300_000, dtype=np.float64).reshape(500, 600)
        return {"c": x, "f": x.T, "strided": x[:, ::2], "list": list(range(400_000)),
                "bytearray": bytearray(b"y" * (2 << 20))}[kind]

    for i, kind in enumerate(["c", "f", "strided", "list", "bytearray"]):
        path = f"{job}/{i}-1.bin"
        ans = executor.call(1 + i, arrays, ((kind,), {}), store=[str(store), path, 1 << 20, 0, False])
        assert ans[0] == 4, (kind, ans)
        data = (store / path).read_bytes()
        assert msgpack.unpackb(data) == pickle.dumps(arrays(kind), protocol=5), kind
        assert ans[2:4] == [len(data), hashlib.sha256(data).hexdigest()], kind
    # Inline (under the limit), the same bytes come back through the pipe.
    ans = executor.call(1, None, (("f",), {}), store=[str(store), f"{job}/9-1.bin", 16 << 20, 0, False])
    assert ans[0] == 0 and ans[1] == pickle.dumps(arrays("f"), protocol=5)


def test_a_held_input_is_taken_before_sent_ones_can_push_it_out(small, store):
    held = f"{uuid.uuid4()}/1-1.bin"
    ans = small.call(1, payload, ((3 << 20,), {}), store=[str(store), held, 1 << 20, 0, False])
    assert ans[0] == 4 and ans[4] is True
    sent = msgpack.packb(pickle.dumps(b"s" * (3 << 20)), use_bin_type=True)
    refs = [(0, "b/1-1.bin", len(sent), False), (1, held, ans[2], True)]
    got = small.call(2, lambda s, h: (len(s), len(h)), ((Dep(0), Dep(1)), {}), inputs=[sent, None], refs=refs)
    assert got[0] == 0, got
    assert pickle.loads(got[1]) == (3 << 20, 3 << 20)


def test_a_view_of_a_far_larger_array_is_stored_but_not_kept(executor, store, tmp_path):
    np = pytest.importorskip("numpy")
    job = uuid.uuid4()

    def view(n):
        big = np.ones(n, dtype=np.uint8)
        return big[: 2 << 20]

    ans = executor.call(1, view, ((40 << 20,), {}), store=[str(store), f"{job}/1-1.bin", 1 << 20, 0, False])
    assert ans[0] == 4 and ans[4] is False, ans[:1] + ans[2:]
    ans = executor.call(2, len, ((Dep(0),), {}), inputs=[None], refs=[(0, f"{job}/1-1.bin", ans[2], True)])
    assert ans == [3, [0]]
    # A view of about its own size (a transpose) is kept.
    ans = executor.call(3, lambda: np.ones((1024, 1024)).T, ((), {}), store=[str(store), f"{job}/2-1.bin", 1 << 20, 0, False])
    assert ans[0] == 4 and ans[4] is True


def test_the_stores_limit_is_on_the_stored_size(executor, store, tmp_path):
    n = 3 << 20
    stored = len(pickle.dumps(payload(n), protocol=5)) + 5
    spec = [str(store), f"{uuid.uuid4()}/1-1.bin", 1 << 20, stored - 1, False]
    assert executor.call(1, payload, ((n,), {}), store=spec) == [2, stored]
    assert not list(store.iterdir())
    spec[3] = stored
    assert executor.call(1, None, ((n,), {}), store=spec)[:3] == [4, spec[1], stored]
