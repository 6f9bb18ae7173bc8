"""`Client`: Dask's futures API over one scheduler connection. Submissions are
pipelined; a reader thread settles futures from `Outcomes`, reconnects by
scheduler file after a scheduler restart, resubmits and re-watches."""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from . import _conn, _stored
from ._submit import JobBuilder, func_name
from .future import (ALL_COMPLETED, CANCELLED, ERROR, FINISHED, PENDING, Future, TaskState, as_completed,
                     futures_of, wait)

log = logging.getLogger("actord")

# Stands for the settled tasks of a job watched again for one of them.
_SETTLED = TaskState("", b"", 0, "py", [])
_SETTLED.status = FINISHED


def parse_timeout(t: Any) -> float:
    """Seconds from a number or Dask-style text (`"30s"`, `"500ms"`, `"2m"`)."""
    if isinstance(t, (int, float)):
        return float(t)
    s = str(t).strip().lower()
    for suffix, mult in (("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if s.endswith(suffix) and s[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(s[: -len(suffix)]) * mult
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"bad timeout {t!r}: expected seconds or e.g. '30s', '500ms', '2m'") from None


class SchedulerError(RuntimeError):
    """The scheduler refused a request (e.g. a submission naming an unknown task)."""


class _Job:
    __slots__ = ("id", "states", "frame", "submitted", "open")

    def __init__(self, job_id: bytes, states: List[TaskState], frame: bytes):
        self.id = job_id
        self.states = states
        self.frame: Optional[bytes] = frame  # kept until `Submitted`, to resubmit
        self.submitted = False
        self.open = len(states)


class _Reply:
    __slots__ = ("event", "value", "error")

    def __init__(self):
        self.event = threading.Event()
        self.value: Any = None
        self.error: Optional[BaseException] = None


_STREAM = {"Submitted", "Watching", "Outcomes", "JobDone", "Unwatched"}


class Client:
    """Connects to an actord scheduler found by scheduler file, as the CLI does:
    `scheduler_file`, else `$ACTORD_SCHEDULER_FILE`, else
    `$SCRATCH/actord/scheduler.json`, else `./actord-scheduler.json`."""

    def __init__(self, address: Optional[str] = None, scheduler_file: Optional[str] = None,
                 timeout: Any = 60, set_as_default: bool = True, **kwargs: Any):
        unknown = set(kwargs) - {"name", "asynchronous", "direct_to_workers", "heartbeat_interval",
                                 "serializers", "deserializers", "connection_limit", "security"}
        if unknown:
            raise TypeError(f"Client() got unexpected keyword arguments {sorted(unknown)}")
        if kwargs.get("asynchronous"):
            raise NotImplementedError("actord's Client is synchronous only")
        self.timeout = parse_timeout(timeout)
        self._path = _conn.resolve_scheduler_file(scheduler_file)
        self._address = address
        self._lock = threading.RLock()
        self._jobs: Dict[bytes, _Job] = {}
        self._keys: "weakref.WeakValueDictionary[str, TaskState]" = weakref.WeakValueDictionary()
        self._requests: "collections.deque[_Reply]" = collections.deque()
        self._req_lock = threading.Lock()
        self._closing = False
        self._up = threading.Event()
        self._lost: Optional[BaseException] = None
        self._conn, self.scheduler_info_file = self._open()
        self._up.set()
        self._reader = threading.Thread(target=self._read_loop, name="actord-client-reader", daemon=True)
        self._reader.start()
        self._dask_ctx = None
        if set_as_default:
            self._set_as_dask_scheduler()

    # ---- connection ----

    def _open(self, timeout: Optional[float] = None):
        timeout = self.timeout if timeout is None else timeout
        if self._address is None:
            return _conn.connect(self._path, timeout)
        sf = _conn.read_scheduler_file(self._path, time.monotonic() + timeout) if self._path.exists() else {}
        sf = dict(sf, address=self._address)
        sf.setdefault("secret", os.environ.get("ACTORD_SECRET", ""))
        sf.setdefault("tls_fingerprint", os.environ.get("ACTORD_TLS_FINGERPRINT", ""))
        deadline = time.monotonic() + timeout
        while True:
            try:
                return _conn.Conn.open(sf), sf
            except _conn.Rejected:
                raise
            except OSError as e:
                if time.monotonic() >= deadline:
                    raise _conn.ConnectError(f"cannot reach the scheduler at {self._address}: {e}") from e
            time.sleep(0.05)

    def _set_as_dask_scheduler(self) -> None:
        try:
            import dask
        except ImportError:
            return
        self._dask_ctx = dask.config.set(scheduler=self.get)

    @property
    def address(self) -> str:
        return self._conn.address

    def _read_loop(self) -> None:
        while not self._closing:
            conn = self._conn
            try:
                while True:
                    self._dispatch(conn.recv())
            except Exception as e:  # a lost connection or a frame we cannot read
                if self._closing:
                    return
                self._up.clear()
                self._fail_requests(ConnectionError(f"lost the scheduler: {e}"))
                conn.close()
                if not self._reconnect(e):
                    return

    def _reconnect(self, why: BaseException) -> bool:
        log.warning("lost the scheduler at %s (%s); reconnecting", self._conn.address, why)
        try:
            conn, sf = self._open()
        except Exception as e:
            self._lost = e
            with self._lock:
                for job in list(self._jobs.values()):
                    for s in job.states:
                        s.settle(ERROR, error=f"ConnectionError: lost the scheduler and could not reconnect: {e}")
                self._jobs.clear()
            self._up.set()
            log.error("could not reconnect to the scheduler: %s", e)
            return False
        with self._lock:
            self._conn, self.scheduler_info_file = conn, sf
            frames = []
            for job in self._jobs.values():
                frames.append(job.frame if not job.submitted else _conn.pack({"Watch": {"job": job.id}}))
        log.info("reconnected to the scheduler at %s (epoch %s)", conn.address, conn.epoch)
        self._up.set()
        try:
            for f in frames:
                conn.send_raw(f)
        except OSError:
            pass  # the reader sees it and reconnects again
        return True

    def _fail_requests(self, err: BaseException) -> None:
        with self._req_lock:
            while self._requests:
                r = self._requests.popleft()
                r.error = err
                r.event.set()

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, str):
            tag, body = msg, {}
        elif isinstance(msg, dict) and len(msg) == 1:
            ((tag, body),) = msg.items()
        else:
            log.warning("unexpected message from the scheduler: %.200r", msg)
            return
        if tag in _STREAM:
            getattr(self, "_on_" + tag)(body)
        elif tag == "Error" and self._job_refused(body):
            pass
        else:
            with self._req_lock:
                r = self._requests.popleft() if self._requests else None
            if r is None:
                log.warning("unexpected message from the scheduler: %.200r", msg)
                return
            if tag == "Error":
                r.error = SchedulerError(str(body.get("message")))
            else:
                r.value = (tag, body)
            r.event.set()

    def _job_refused(self, body: dict) -> bool:
        job = body.get("job")
        with self._lock:
            j = self._jobs.get(bytes(job)) if job is not None else None
            if j is None or j.submitted:
                return False
            del self._jobs[j.id]
            for s in j.states:
                s.settle(ERROR, error=f"SchedulerError: the scheduler refused the submission: {body.get('message')}")
        return True

    def _on_Submitted(self, body: dict) -> None:
        job = bytes(body["job"])
        with self._lock:
            j = self._jobs.get(job)
            if j is None or j.submitted:
                return
            j.submitted, j.frame = True, None
        self._send({"Watch": {"job": job}})

    def _on_Watching(self, body: dict) -> None:
        pass

    def _on_Unwatched(self, body: dict) -> None:
        pass

    def _on_Outcomes(self, body: dict) -> None:
        with self._lock:
            j = self._jobs.get(bytes(body["job"]))
            if j is None:
                return
            states = j.states
            for o in body["outcomes"]:
                idx = o.get("idx")
                if not isinstance(idx, int) or not 0 <= idx < len(states) or states[idx].status != "pending":
                    continue
                out = o.get("outcome") or {}
                if "Ok" in out:
                    states[idx].settle(FINISHED, result=out["Ok"].get("result"), attempts=o.get("attempts", 0))
                elif "Stored" in out:
                    try:
                        ref = _stored.StoredRef(out["Stored"] or {}, self._load_stored)
                    except _stored.StoredResultError as e:
                        states[idx].settle(ERROR, error=f"StoredResultError: {e}", attempts=o.get("attempts", 0))
                    else:
                        states[idx].settle(FINISHED, result=ref, attempts=o.get("attempts", 0))
                else:
                    err = out.get("Err") or {}
                    error = str(err.get("error", "unknown error"))
                    status = CANCELLED if error == "canceled" else ERROR
                    states[idx].settle(status, error=error, exception=err.get("exception"),
                                       attempts=o.get("attempts", 0))
                j.open -= 1
            if j.open <= 0:
                del self._jobs[j.id]

    def _on_JobDone(self, body: dict) -> None:
        with self._lock:
            j = self._jobs.pop(bytes(body["job"]), None)
            if j is None:
                return
            for s in j.states:
                s.settle(ERROR, error="RuntimeError: the scheduler finished the job without this task's outcome")

    def _load_stored(self, ref: "_stored.StoredRef") -> bytes:
        """A stored result's checked bytes: from the store if this host sees
        it, else streamed through the scheduler (1 MiB a piece)."""
        try:
            data = _stored.read_local(_stored.store_dir(self.scheduler_info_file), ref)
        except _stored.StoredResultLost:
            data = None  # this host's copy is bad: the scheduler's may be good
        if data is not None:
            return data
        buf = bytearray()
        while True:
            try:
                body = self._request({"ReadStored": {"path": ref.path, "offset": len(buf)}}, "StoredChunk")
            except SchedulerError as e:
                if " is missing: " in str(e) or " is corrupt: " in str(e):
                    raise _stored.StoredResultLost(str(e)) from None
                raise
            piece, total = body.get("data") or b"", body.get("total")
            if body.get("offset") != len(buf) or total != ref.size:
                raise _stored.StoredResultLost(f"stored result {ref.path} is corrupt: {total} bytes where {ref.size} were written")
            if not piece and len(buf) < total or len(buf) + len(piece) > total:
                raise _stored.StoredResultError(f"stored result {ref.path}: the scheduler sent a bad piece")
            buf += piece
            if len(buf) == total:
                return _stored.verify(ref, bytes(buf))

    def _rerun_stored(self, state: TaskState, ref: "_stored.StoredRef") -> None:
        """The stored result of `state` is lost: the scheduler (after reading
        the file itself) runs its task again; the state waits for the new
        outcome, its job watched again."""
        log.warning("stored result of task %r lost (%s): the scheduler runs it again", state.key, ref.path)
        self._request({"StoredLost": {"job": state.job, "idx": state.idx, "path": ref.path}}, "StoredRerun")
        with self._lock:
            state.status, state.result = PENDING, None
            j = self._jobs.get(state.job)
            watch = j is None
            if j is None:
                # Only this task is waited for: the others are settled already.
                j = _Job(state.job, [_SETTLED] * state.idx + [state], b"")
                j.submitted, j.frame, j.open = True, None, 0
                self._jobs[state.job] = j
            elif j.states[state.idx] is not state:
                raise AssertionError("a job's task state was replaced")
            j.open += 1
        if watch:
            self._send({"Watch": {"job": state.job}})

    def _send(self, msg: Any) -> None:
        try:
            self._conn.send(msg)
        except OSError:
            pass  # the reader notices, reconnects, and resends what is not acknowledged

    def _request(self, msg: Any, expect: str, timeout: Optional[float] = None) -> dict:
        """One request/answer; retried once across a reconnect."""
        for attempt in range(2):
            if not self._up.wait(self.timeout):
                raise _conn.ConnectError("not connected to the scheduler")
            if self._lost is not None:
                raise _conn.ConnectError(f"lost the scheduler: {self._lost}")
            r = _Reply()
            with self._req_lock:
                self._requests.append(r)
                try:
                    self._conn.send(msg)
                except OSError:
                    pass
            if not r.event.wait(self.timeout if timeout is None else timeout):
                raise TimeoutError(f"the scheduler did not answer {next(iter(msg))} within {self.timeout} s")
            if r.error is None:
                tag, body = r.value
                if tag != expect:
                    raise SchedulerError(f"unexpected answer {tag} to {next(iter(msg))}")
                return body
            if not isinstance(r.error, ConnectionError) or attempt == 1:
                raise r.error
        raise AssertionError("unreachable")

    # ---- submitting ----

    def _submit_job(self, b: JobBuilder) -> None:
        if not b.specs:
            return
        frame = _conn.pack(b.frame())
        with self._lock:
            if self._lost is not None:
                raise _conn.ConnectError(f"lost the scheduler: {self._lost}")
            self._jobs[b.id] = _Job(b.id, b.states, frame)
            for s in b.states:
                self._keys[s.key] = s
        try:
            self._conn.send_raw(frame)
        except OSError:
            pass

    def submit(self, func, *args, key: Optional[str] = None, pure: bool = True, retries: int = 0,
               priority: int = 0, resources: Optional[dict] = None, workers=None,
               allow_other_workers: bool = False, time_request: Optional[float] = None,
               **kwargs) -> Future:
        """`func(*args, **kwargs)` as a task; futures in the arguments become
        dependencies. With `pure` the key is a token of the call, so the same
        call twice is one task. `time_request` (seconds): how long it is
        expected to run; it goes only to a worker whose allocation lasts that long."""
        b = JobBuilder(self, func_name(func))
        state = b.add(func, args, kwargs, key, pure, func_name(func), priority, retries, resources,
                      time_request)
        self._submit_job(b)
        return Future(state, self)

    def map(self, func, *iterables: Iterable, key=None, pure: bool = True, retries: int = 0,
            priority: int = 0, resources: Optional[dict] = None, batch_size: Optional[int] = None,
            workers=None, allow_other_workers: bool = False, time_request: Optional[float] = None,
            **kwargs) -> List[Future]:
        """`func` over the zipped iterables: one job per `batch_size` tasks
        (all in one job by default), the function sent once per job."""
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        calls = list(zip(*iterables))
        keys = None
        prefix = func_name(func)
        if isinstance(key, (list, tuple)):
            keys = [str(k) for k in key]
            if len(keys) != len(calls):
                raise ValueError(f"map() got {len(keys)} keys for {len(calls)} calls")
        elif key is not None:
            prefix = str(key)
        step = len(calls) if not batch_size else int(batch_size)
        futures: List[Future] = []
        for start in range(0, len(calls), max(step, 1)):
            b = JobBuilder(self, prefix)
            for i in range(start, min(start + step, len(calls))):
                k = keys[i] if keys is not None else None
                s = b.add(func, calls[i], kwargs, k, pure, prefix, priority, retries, resources,
                          time_request)
                futures.append(Future(s, self))
            self._submit_job(b)
        return futures

    def _submit_builtin(self, name: str, args: Any, key: Optional[str] = None) -> Future:
        """One task of a Rust function from the workers' registry (`inc`, `sleep`, …)."""
        import msgpack
        b = JobBuilder(self, name)
        state = b.add_spec(key or f"{name}-{os.urandom(8).hex()}",
                           {"Fn": {"name": name, "args": msgpack.packb(args, use_bin_type=True)}}, [], "fn")
        self._submit_job(b)
        return Future(state, self)

    # ---- results ----

    def gather(self, futures, errors: str = "raise", direct=None, asynchronous=None):
        """Results in the shape of `futures` (nested lists, tuples, sets, dicts).
        `errors="skip"` leaves failed futures out instead of raising."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        fs = futures_of(futures)
        if errors == "raise":
            for f in as_completed(fs):
                if f.status != FINISHED:
                    raise f._exception()
        else:
            wait(fs)
        return _rebuild(futures, errors)

    def cancel(self, futures, asynchronous=None, force: bool = False) -> None:
        """Cancels the tasks of these futures that have not finished."""
        pending = [f for f in futures_of([futures] if isinstance(futures, Future) else list(futures))
                   if not f.done()]
        by_job: Dict[bytes, List[str]] = {}
        for f in pending:
            by_job.setdefault(f._state.job, []).append(f.key)
        for job, keys in by_job.items():
            self._request({"Cancel": {"job": job, "keys": keys}}, "Done")
        with self._lock:
            for f in pending:
                f._state.settle(CANCELLED, error="canceled")

    def wait(self, fs, timeout=None, return_when: str = ALL_COMPLETED):
        return wait(fs, timeout, return_when)

    def get(self, dsk, keys, **kwargs):
        """Dask's scheduler interface: `dask.compute(x, scheduler=client.get)`."""
        from ._dask import get
        return get(self, dsk, keys, **kwargs)

    # ---- the cluster ----

    def status(self) -> dict:
        return self._request("Status", "Status")["status"]

    def workers(self) -> list:
        return self._request("Workers", "Workers")["workers"]

    def scheduler_info(self, n_workers: int = -1, **kwargs) -> dict:
        """A subset of Dask's: `{"address", "workers": {name: {"nthreads", "host", "pid"}}}`."""
        ws = self.workers()
        return {"address": self.address, "type": "Scheduler",
                "workers": {f"w{w['id']}": {"nthreads": w["slots"], "host": w["host"], "pid": w["pid"],
                                            "name": f"w{w['id']}"} for w in ws}}

    def nthreads(self) -> dict:
        return {name: w["nthreads"] for name, w in self.scheduler_info()["workers"].items()}

    def wait_for_workers(self, n_workers: int = 1, timeout: Any = None) -> None:
        deadline = None if timeout is None else time.monotonic() + parse_timeout(timeout)
        delay = 0.01
        while len(self.workers()) < n_workers:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"only {len(self.workers())} of {n_workers} workers within {timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    # ---- lifetime ----

    def close(self, timeout: Any = None) -> None:
        if self._closing:
            return
        self._closing = True
        if self._dask_ctx is not None:
            try:
                self._dask_ctx.__exit__(None, None, None)
            except Exception:
                pass
            self._dask_ctx = None
        self._conn.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(5)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<actord.Client: scheduler={self.address!r}>"


def _rebuild(obj: Any, errors: str) -> Any:
    t = type(obj)
    if isinstance(obj, Future):
        return obj.result()
    if t in (list, tuple, set, frozenset):
        items = [x for x in obj if not (errors == "skip" and isinstance(x, Future) and x.status != FINISHED)]
        return t(_rebuild(x, errors) for x in items)
    if t is dict:
        return {k: _rebuild(v, errors) for k, v in obj.items()
                if not (errors == "skip" and isinstance(v, Future) and v.status != FINISHED)}
    return obj

