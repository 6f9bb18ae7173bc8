"""The Python executor: runs `py` tasks one at a time for one worker slot.

Started by the worker as `python -m actord.executor --scratch PREFIX
--max-result BYTES`. It speaks to the worker over its original stdin and
stdout (4-byte big-endian length + msgpack); the task's own prints go to
PREFIX.out / PREFIX.err, moved to the task's files when it wrote anything.

Request:  [fkey, pickle or None, args, inputs, out_path, err_path, clear,
           [job, task, attempt, worker],  (set as ACTORD_JOB, _TASK, _ATTEMPT, _WORKER)
           refs, store]
  refs:   [[position, path, size, held], ...] for the inputs that are stored
          results: `held`, the input is this executor's own object of that
          stored result (inputs[position] is nil); else its bytes are
          there, and the object is kept for the tasks that follow.
  store:  nil, or [dir, path, inline, max, fsync first]: a result over
          `inline` bytes is written to the results store here, as the
          worker would (temporary name, fsync, rename).
Response: [0, pickled result] | [1, error text, pickled exception or None]
          | [2, size of a result over --max-result]
          | [3, [positions of held inputs this executor no longer has]]
          | [4, path, size, sha256 hex, kept]: the result, in the store
            (`kept`: this executor keeps its object for the next tasks)
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import signal
import struct
import sys
import traceback
from collections import OrderedDict

import cloudpickle
import msgpack

from actord._payload import substitute

# The largest pickle a result can be (its msgpack `bin` has a 32-bit length).
MAX_PICKLE = (1 << 32) - 1
# Most buffers one writev takes (Linux's IOV_MAX).
IOV_MAX = 1024
# How much of a traceback goes into a task's error.
MAX_ERROR = 16_000


class ResultNotPicklable(Exception):
    """The task returned a value that cannot be pickled."""


class _Parts:
    """A pickle as the pickler writes it: its frames, and the large buffers
    it passes on as they are (a numpy array's memory, say), not copied. The
    parts are the bytes of `pickle.dumps`, in order."""

    def __init__(self):
        self.parts, self.size = [], 0

    def write(self, b):
        if isinstance(b, pickle.PickleBuffer):
            b = b.raw()  # its bytes in memory order, as pickle.dumps copies them
        elif isinstance(b, bytearray):
            b = bytes(b)  # (a __reduce__ may reuse or grow it before the end)
        elif not isinstance(b, bytes):
            b = memoryview(b).cast("B")
        self.parts.append(b)
        self.size += len(b)
        return len(b)


def _dumps_result(value) -> _Parts:
    """The result's pickle, in parts that share the result's large buffers
    (the caller keeps `value` alive while it uses them)."""
    try:
        out = _Parts()
        pickle.Pickler(out, protocol=5).dump(value)
        return out
    except Exception:
        pass
    for dumps in (pickle.dumps, cloudpickle.dumps):  # copied, as a whole
        try:
            out = _Parts()
            out.write(dumps(value, protocol=5))
            return out
        except Exception as e:
            error = e
    raise ResultNotPicklable(f"the task's result ({type(value).__name__}) cannot be pickled: {error}") from None


def _describe(exc: BaseException) -> str:
    head = f"{type(exc).__name__}: {exc}"
    tb = exc.__traceback__
    # Leave out this module's own frames (the call of the function).
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    if len(text) > MAX_ERROR:
        text = "…" + text[-MAX_ERROR:]
    return f"{head}\n\n{text}"


def _pickle_exception(exc: BaseException):
    try:
        b = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(b)  # an exception that cannot be rebuilt is no use to the client
        return b
    except Exception:
        return None


class _Output:
    """The task's stdout (fd 1) and stderr (fd 2): scratch files, moved to
    the task's own files after a task that wrote to them."""

    def __init__(self, prefix: str):
        self.paths = {1: prefix + ".out", 2: prefix + ".err"}
        self._reopen(1)  # fd 2 is PREFIX.err already (the worker opened it)

    def _reopen(self, fd: int):
        new = os.open(self.paths[fd], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(new, fd)
        os.close(new)

    def settle(self, out_path: str, err_path: str):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        for fd, dest in ((1, out_path), (2, err_path)):
            if os.fstat(fd).st_size > 0:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.replace(self.paths[fd], dest)
                self._reopen(fd)


class FunctionNotLoadable(Exception):
    """The task's function cannot be unpickled in this executor."""


def _unloadable(exc: BaseException):
    message = f"the task's function cannot be unpickled here: {type(exc).__name__}: {exc}"

    def fail(*_a, **_kw):
        raise FunctionNotLoadable(message)

    return fail


_ENV_NAMES = ("ACTORD_JOB", "ACTORD_TASK", "ACTORD_ATTEMPT", "ACTORD_WORKER")
_env_now = [None, None, None, None]


def _set_env(values):
    """The task's ACTORD_* variables (only those that changed are set)."""
    for k, v in enumerate(values):
        v = str(v)
        if _env_now[k] != v:
            os.environ[_ENV_NAMES[k]] = v
            _env_now[k] = v


# msgpack `bin` headers: type byte -> header length.
_BIN_HEADER = {0xC4: 2, 0xC5: 3, 0xC6: 5}


def _bin_payload(encoded: bytes):
    """The bytes inside a msgpack `bin` (an input is its producer's pickle
    encoded so), as a view: a 64 MiB input is not copied once more."""
    head = _BIN_HEADER.get(encoded[0]) if encoded else None
    if head is None or len(encoded) < head:
        return msgpack.unpackb(encoded)
    size = int.from_bytes(encoded[1:head], "big")
    if head + size != len(encoded):
        return msgpack.unpackb(encoded)  # (says what is wrong with it)
    return memoryview(encoded)[head:]


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return bytes((0xC4, n))
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


class _Objects:
    """The objects of stored results this executor made or was sent lately,
    by path, at most `cap` bytes of their stored size, oldest out first: a
    task that takes one as input gets the object itself, as in Dask's
    workers (the file stays, for other readers and for durability). The
    worker keeps the same account, so it knows what to send."""

    def __init__(self, cap: int):
        self.cap, self.size, self.items = cap, 0, OrderedDict()

    def keep(self, path: str, value, size: int):
        if size > self.cap:
            return
        old = self.items.pop(path, None)
        if old is not None:
            self.size -= old[1]
        self.items[path] = (value, size)
        self.size += size
        while self.size > self.cap:
            self.size -= self.items.popitem(last=False)[1][1]

    def get(self, path: str, size: int):
        item = self.items.get(path)
        return item if item is not None and item[1] == size else None


def _self_contained(value, size: int) -> bool:
    """Whether keeping `value` keeps about `size` bytes alive, no more: a
    numpy view of a far larger array (`big[:10]`) would keep all of it, so
    it is not kept (only the view's own base is looked at)."""
    base = getattr(value, "base", None)
    while getattr(base, "base", None) is not None:
        base = base.base
    if base is None:
        return True
    try:
        held = memoryview(base).nbytes
    except TypeError:
        held = getattr(base, "nbytes", None)
        if not isinstance(held, int):
            return False
    return held <= 2 * size + (1 << 20)


class _Missing(Exception):
    """Held inputs this executor no longer has (the worker sends them)."""

    def __init__(self, positions):
        self.positions = positions


def _inputs(inputs, refs, objects: _Objects):
    held = {pos: (path, size) for pos, path, size, is_held in refs if is_held}
    sent = {pos: (path, size) for pos, path, size, is_held in refs if not is_held}
    missing = [pos for pos, (path, size) in held.items() if objects.get(path, size) is None]
    if missing:
        raise _Missing(missing)
    # The held ones first: keeping a sent one may let a held one go.
    values = [objects.get(*held[pos])[0] if pos in held else None for pos in range(len(inputs))]
    for pos, encoded in enumerate(inputs):
        if pos in held:
            continue
        value = values[pos] = pickle.loads(_bin_payload(encoded))
        if pos in sent:
            objects.keep(sent[pos][0], value, sent[pos][1])
    return values


def _run(req, functions, objects: _Objects):
    fkey, fpickle, args, inputs, _out, _err, clear, env, refs, _store = req
    _set_env(env)
    if clear:
        functions.clear()
    if fpickle is not None:
        try:
            functions[fkey] = pickle.loads(fpickle)
        except Exception as exc:  # every task of that function fails the same way
            functions[fkey] = _unloadable(exc)
    func = functions[fkey]
    # (The inputs first: those sent are kept whatever the task does, as the
    # worker's account of them says.)
    values = _inputs(inputs, refs, objects) if inputs else None
    a, kw = pickle.loads(args)
    if values is not None:
        a, kw = substitute((a, kw), values)
    return func(*a, **kw)


def _fsync_dir(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _store(spec, head: bytes, result: _Parts, write_all):
    """Writes a result to the store as the worker would: a temporary name,
    fsynced (unless the worker fsyncs later), renamed; returns its size and
    SHA-256. An OSError (a full disk, say) is the caller's."""
    store_dir, path, _inline, _max, sync_first = spec
    job, name = path.split("/")
    job_dir = os.path.join(store_dir, job)
    fresh = not os.path.isdir(job_dir)
    os.makedirs(job_dir, mode=0o700, exist_ok=True)
    tmp = os.path.join(job_dir, f".{name[:-4]}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            write_all(fd, head, *result.parts)
            if sync_first:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(job_dir, name))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_first:
        _fsync_dir(job_dir)
        if fresh:
            _fsync_dir(store_dir)
    digest = hashlib.sha256(head)
    for part in result.parts:
        digest.update(part)
    return len(head) + result.size, digest.hexdigest()


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m actord.executor")
    p.add_argument("--scratch", required=True)
    p.add_argument("--max-result", type=int, default=0)
    p.add_argument("--preload", default="")
    p.add_argument("--objects", type=int, default=0)
    opts = p.parse_args(argv)
    # Ctrl-C at a terminal reaches the whole process group: the worker drains
    # on it, and this process finishes its task rather than raising in it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol keeps the original pipes; the task gets the scratch files.
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    output = _Output(opts.scratch)
    proto_in = os.fdopen(rfd, "rb", buffering=1 << 16)
    packb, unpackb, pack_len = msgpack.packb, msgpack.unpackb, struct.Struct(">I").pack
    max_result = opts.max_result

    def write_all(fd, *parts):
        views = [memoryview(p) for p in parts]
        while views:
            n = os.writev(fd, views[:IOV_MAX])
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]

    def send(obj):
        b = packb(obj, use_bin_type=True)
        write_all(wfd, pack_len(len(b)), b)

    def send_result(result: _Parts):
        # [0, result] without copying the result into one more buffer.
        head = b"\x92\x00" + _bin_header(result.size)
        write_all(wfd, pack_len(len(head) + result.size), head, *result.parts)

    def stored(spec, value, result: _Parts):
        """[4, path, size, sha256] once the store has it; None: send it
        (the worker writes it, or says why the store cannot)."""
        head = _bin_header(result.size)
        try:
            size, digest = _store(spec, head, result, write_all)
        except OSError:
            return None
        kept = _self_contained(value, size)
        if kept:
            objects.keep(spec[1], value, size)
        return [4, spec[1], size, digest, kept]

    failed = []
    for name in filter(None, opts.preload.split(",")):
        try:
            importlib.import_module(name)
        except BaseException as exc:  # told to the worker, which logs it
            failed.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
    send(["ready", sys.version.split()[0], failed])
    functions = {}
    objects = _Objects(opts.objects)
    read = proto_in.read
    while True:
        head = read(4)
        if len(head) < 4:
            return 0  # the worker closed the pipe: its slot is gone
        body = read(struct.unpack(">I", head)[0])
        req = unpackb(body, raw=False)
        try:
            value = _run(req, functions, objects)
            result = _dumps_result(value)
            store = req[9]
            if result.size > MAX_PICKLE:
                resp = [1, f"the task's result pickles to {result.size:,} bytes, over the {MAX_PICKLE:,} "
                        "a result can be: return less, or write it to a file", None]
            elif store is not None and (stored_size := result.size + len(_bin_header(result.size))) > store[2]:
                # (The store's limit is on the stored size, as the worker's.)
                too_big = store[3] and stored_size > store[3]
                resp = [2, stored_size] if too_big else stored(store, value, result)
            elif max_result and result.size > max_result:
                resp = [2, result.size]
            else:
                resp = None
        except _Missing as m:
            resp = [3, m.positions]
        except BaseException as exc:  # the task's failure, whatever it is
            resp = [1, _describe(exc), _pickle_exception(exc)]
        output.settle(req[4], req[5])
        if resp is None:
            send_result(result)
        else:
            send(resp)
        value = result = None  # (their memory is not kept until the next task)


if __name__ == "__main__":
    sys.exit(main())
