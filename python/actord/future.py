"""Futures: one task's state as the client sees it, and the ways to wait for
many (`as_completed`, `wait`), with Dask's names and signatures."""

from __future__ import annotations

import builtins
import collections
import concurrent.futures
import pickle
import queue
import threading
import time
from typing import Any, Iterable, Iterator, List, Optional

import msgpack

from ._stored import StoredRef, StoredResultError, StoredResultLost

# How many times a stored result found lost is computed again for one
# `result()` before its error is raised.
MAX_RERUNS = 3

PENDING, FINISHED, ERROR, CANCELLED = "pending", "finished", "error", "cancelled"


class FutureCancelledError(concurrent.futures.CancelledError):
    """The task was cancelled (by `Future.cancel`, `actord ctl cancel`, or a scheduler that lost it)."""


class TaskError(RuntimeError):
    """A task failed with an error that is not a (picklable) Python exception."""


class ResultError(RuntimeError):
    """A task finished but its result cannot be decoded in this process."""


class RemoteTraceback(Exception):
    """The traceback of a task's exception, as text from the worker."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\nTraceback on the worker:\n" + self.tb


class TaskState:
    """What the scheduler said about one task; shared by every Future of its key."""

    __slots__ = ("key", "job", "idx", "kind", "status", "result", "error", "exception",
                 "attempts", "waiters", "deps", "__weakref__")

    def __init__(self, key: str, job: bytes, idx: int, kind: str, deps: list):
        self.key = key
        self.job = job
        self.idx = idx
        self.kind = kind  # "py": the result is a pickle; "fn": plain msgpack
        self.status = PENDING
        self.result: Optional[bytes] = None
        self.error: Optional[str] = None
        self.exception: Optional[bytes] = None
        self.attempts = 0
        self.waiters: list = []
        self.deps = deps  # TaskStates this one takes as inputs (to find a root cause)

    def settle(self, status: str, result=None, error=None, exception=None, attempts=0) -> None:
        """Called by the client's reader with the client lock held."""
        if self.status != PENDING:
            return
        self.status, self.result, self.error, self.exception = status, result, error, exception
        self.attempts = attempts
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            w(self)


def _split_error(error: str) -> tuple:
    head, sep, tb = error.partition("\n\n")
    return head, tb if sep else ""


def _rebuild_exception(state: TaskState) -> BaseException:
    """The task's exception, as the same type when it can be, with the remote traceback."""
    error = state.error or "unknown error"
    head, tb = _split_error(error)
    exc: Optional[BaseException] = None
    if state.exception is not None:
        try:
            exc = pickle.loads(state.exception)
            if not isinstance(exc, BaseException):
                exc = None
        except Exception:
            exc = None
    if exc is None and head.startswith("dependency "):
        for dep in state.deps:
            if dep.status == ERROR:
                return _rebuild_exception(dep)
    if exc is None:
        name, sep, message = head.partition(": ")
        typ = getattr(builtins, name, None) if sep and name.isidentifier() else None
        if isinstance(typ, type) and issubclass(typ, Exception):
            try:
                exc = typ(message)
            except Exception:
                exc = None
    if exc is None:
        exc = TaskError(f"task {state.key!r} failed: {head}")
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
        if hasattr(exc, "add_note"):
            exc.add_note(f"(raised by task {state.key!r} on an actord worker; remote traceback above)")
    return exc


def decode_result(state: TaskState) -> Any:
    if isinstance(state.result, StoredRef):
        try:
            state.result = state.result.load()  # read once, kept like any result
        except StoredResultError as e:
            raise ResultError(f"cannot read the result of task {state.key!r}: {e}") from e
        except (OSError, RuntimeError) as e:
            raise ResultError(f"cannot read the stored result of task {state.key!r}: {type(e).__name__}: {e}") from e
    try:
        raw = msgpack.unpackb(state.result, raw=False, strict_map_key=False)
        if state.kind == "py":
            if not isinstance(raw, (bytes, bytearray)):
                raise TypeError(f"expected a pickle, got {type(raw).__name__}")
            return pickle.loads(raw)
        return raw
    except Exception as e:
        raise ResultError(
            f"cannot decode the result of task {state.key!r} in this process: {type(e).__name__}: {e}"
        ) from e


class Future:
    """A task's result as it will be: `result()`, `exception()`, `done()`, `cancel()`."""

    __slots__ = ("_state", "client")

    def __init__(self, state: TaskState, client):
        self._state = state
        self.client = client

    @property
    def key(self) -> str:
        return self._state.key

    @property
    def status(self) -> str:
        return self._state.status

    def done(self) -> bool:
        return self._state.status != PENDING

    def cancelled(self) -> bool:
        return self._state.status == CANCELLED

    def _wait(self, timeout: Optional[float]) -> None:
        if self._state.status != PENDING:
            return
        ev = threading.Event()
        with self.client._lock:
            if self._state.status == PENDING:
                self._state.waiters.append(lambda _s: ev.set())
            else:
                ev.set()
        if not ev.wait(timeout):
            raise TimeoutError(f"task {self.key!r} did not finish within {timeout} s")

    def result(self, timeout: Optional[float] = None) -> Any:
        """Waits for the task; returns its value or raises its exception. A
        stored result found missing or corrupt is computed again (the
        scheduler checks the file too), at most `MAX_RERUNS` times."""
        for reruns in range(MAX_RERUNS + 1):
            self._wait(timeout)
            s = self._state
            if s.status != FINISHED:
                raise self._exception()
            ref = s.result
            try:
                return decode_result(s)
            except ResultError as e:
                if not isinstance(e.__cause__, StoredResultLost) or reruns == MAX_RERUNS:
                    raise
            self.client._rerun_stored(s, ref)
        raise AssertionError("unreachable")

    def _exception(self) -> BaseException:
        s = self._state
        if s.status == CANCELLED:
            return FutureCancelledError(f"task {s.key!r} was cancelled" + (f": {s.error}" if s.error and s.error != "canceled" else ""))
        return _rebuild_exception(s)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """Waits for the task; its exception, or None if it finished."""
        self._wait(timeout)
        if self._state.status == FINISHED:
            return None
        return self._exception()

    def traceback(self, timeout: Optional[float] = None) -> Optional[str]:
        """The remote traceback text of a failed task (None if it did not fail)."""
        self._wait(timeout)
        if self._state.status != ERROR:
            return None
        return _split_error(self._state.error or "")[1] or None

    def cancel(self) -> None:
        self.client.cancel([self])

    def add_done_callback(self, fn) -> None:
        """Calls `fn(future)` once the task is done (from the client's reader thread)."""
        with self.client._lock:
            if self._state.status == PENDING:
                self._state.waiters.append(lambda _s: fn(self))
                return
        fn(self)

    def __reduce__(self):
        raise TypeError(
            f"cannot pickle Future {self.key!r}: pass futures directly or inside lists, tuples, "
            "dicts or sets, where they are replaced by their results"
        )

    def __repr__(self) -> str:
        return f"<Future: {self.status}, key: {self.key}>"


def futures_of(obj: Any, out: Optional[list] = None) -> list:
    """Every Future inside lists, tuples, sets and dicts (values), in order."""
    out = [] if out is None else out
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for x in obj:
            futures_of(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            futures_of(x, out)
    return out


class as_completed:
    """Iterates over futures in the order they finish; `with_results=True`
    yields `(future, result)` pairs. More futures can be `add`ed meanwhile."""

    def __init__(self, futures: Iterable[Future] = (), with_results: bool = False,
                 raise_errors: bool = True, timeout: Optional[float] = None):
        self.with_results = with_results
        self.raise_errors = raise_errors
        self.timeout = timeout
        self._queue: "queue.SimpleQueue[Future]" = queue.SimpleQueue()
        self._pending = 0
        self._plock = threading.Lock()
        for f in futures:
            self.add(f)

    def add(self, future: Future) -> None:
        with self._plock:
            self._pending += 1
        future.add_done_callback(self._queue.put)

    def update(self, futures: Iterable[Future]) -> None:
        for f in futures:
            self.add(f)

    def count(self) -> int:
        with self._plock:
            return self._pending

    def is_empty(self) -> bool:
        return self.count() == 0

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        with self._plock:
            if self._pending == 0:
                raise StopIteration
        try:
            f = self._queue.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"no future finished within {self.timeout} s") from None
        with self._plock:
            self._pending -= 1
        if self.with_results:
            if f.status == FINISHED or self.raise_errors:
                return f, f.result()
            return f, f.exception()
        return f

    def next_batch(self, block: bool = True) -> List:
        """Every future that has finished so far (at least one if `block`)."""
        out = []
        if block and not self.is_empty():
            out.append(next(self))
        while not self.is_empty():
            try:
                f = self._queue.get_nowait()
            except queue.Empty:
                break
            with self._plock:
                self._pending -= 1
            out.append((f, f.result()) if self.with_results else f)
        return out

    def batches(self) -> Iterator[List]:
        while not self.is_empty():
            yield self.next_batch(block=True)


DoneAndNotDoneFutures = collections.namedtuple("DoneAndNotDoneFutures", "done not_done")

FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED = "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED"


def wait(fs, timeout: Optional[float] = None, return_when: str = ALL_COMPLETED) -> DoneAndNotDoneFutures:
    """Waits until all (or the first, or the first failed) futures are done;
    returns `(done, not_done)` sets. Raises TimeoutError after `timeout` seconds."""
    if isinstance(fs, Future):
        fs = [fs]
    fs = futures_of(list(fs))
    if return_when not in (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED):
        raise ValueError(f"return_when must be one of {ALL_COMPLETED}, {FIRST_COMPLETED}, {FIRST_EXCEPTION}")
    cv = threading.Condition()
    counts = {"left": len(fs), "failed": 0}

    def one(state: TaskState) -> None:
        with cv:
            counts["left"] -= 1
            counts["failed"] += state.status != FINISHED
            cv.notify_all()

    for f in fs:
        f.add_done_callback(lambda fut: one(fut._state))

    def satisfied() -> bool:
        if counts["left"] == 0:
            return True
        if return_when == FIRST_COMPLETED:
            return counts["left"] < len(fs)
        return return_when == FIRST_EXCEPTION and counts["failed"] > 0

    deadline = None if timeout is None else time.monotonic() + timeout
    with cv:
        while not satisfied():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"{counts['left']} of {len(fs)} futures not done within {timeout} s")
            cv.wait(left)
    done = {f for f in fs if f.done()}
    return DoneAndNotDoneFutures(done, {f for f in fs if not f.done()})
