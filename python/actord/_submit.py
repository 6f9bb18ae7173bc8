"""Building one job: its function table, its `Py` tasks with futures in the
arguments replaced by `Dep(i)` markers, and Dask-style keys (pure tokens)."""

from __future__ import annotations

import hashlib
import pickle
import uuid
import weakref
from typing import Any, Dict, List, Optional

from . import _payload
from ._payload import Dep
from .future import CANCELLED, Future, TaskState

_SCALARS = frozenset([int, float, str, bytes, bool, type(None), complex, Dep])

# Pickles of functions, kept while the function lives (as distributed does):
# a map of 10,000 tasks pickles its function once.
_FUNC_PICKLES: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


def func_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    return "lambda" if name == "<lambda>" else str(name)


def pickle_function(func: Any) -> tuple:
    """(pickle, digest) of a callable; a clear TypeError when it cannot be pickled."""
    if not callable(func):
        raise TypeError(f"{func!r} is not callable")
    try:
        cached = _FUNC_PICKLES.get(func)
    except TypeError:  # not weak-referenceable, or unhashable
        cached = None
    if cached is not None:
        return cached
    try:
        blob = _payload.dumps(func)
    except Exception as e:
        raise TypeError(f"cannot pickle function {func_name(func)!r}: {type(e).__name__}: {e}") from e
    out = (blob, hashlib.md5(blob).digest())
    try:
        _FUNC_PICKLES[func] = out
    except TypeError:
        pass
    return out


def _plain(obj: Any, depth: int = 0) -> bool:
    """Builtin data only (no futures, nothing pickled by reference to __main__):
    the standard pickler is enough, and much faster than cloudpickle."""
    t = type(obj)
    if t in _SCALARS:
        return True
    if depth > 4:
        return False
    if t is tuple or t is list:
        for x in obj:
            if type(x) not in _SCALARS and not _plain(x, depth + 1):
                return False
        return True
    if t is dict:
        for k, v in obj.items():
            if type(k) not in _SCALARS or (type(v) not in _SCALARS and not _plain(v, depth + 1)):
                return False
        return True
    return False


def _replace(obj: Any, deps: Dict[str, int], states: List[TaskState]) -> Any:
    """A copy of `obj` with each Future replaced by `Dep(i)` (i: its position
    in `states`, one per distinct key), inside exactly the containers that the
    executor's `substitute` walks."""
    t = type(obj)
    if t is Future:
        s = obj._state
        i = deps.get(s.key)
        if i is None:
            i = deps[s.key] = len(states)
            states.append(s)
        return Dep(i)
    if t in _SCALARS:
        return obj
    if t is list:
        return [_replace(x, deps, states) for x in obj]
    if t is tuple:
        return tuple(_replace(x, deps, states) for x in obj)
    if t is dict:
        return {_replace(k, deps, states): _replace(v, deps, states) for k, v in obj.items()}
    if t is set:
        return {_replace(x, deps, states) for x in obj}
    if t is frozenset:
        return frozenset(_replace(x, deps, states) for x in obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return t(*(_replace(x, deps, states) for x in obj))
    return obj


def dump_args(args: tuple, kwargs: dict, what: str, plain: Optional[bool] = None) -> bytes:
    payload = (args, kwargs)
    try:
        if _plain(payload) if plain is None else plain:
            return pickle.dumps(payload, protocol=5)
        return _payload.dumps(payload)
    except Exception as e:
        raise TypeError(f"cannot pickle the arguments of {what}: {type(e).__name__}: {e}") from e


class JobBuilder:
    """Collects the tasks of one job; `frame()` is its `Submit` message."""

    def __init__(self, client, name: str):
        self.client = client
        u = uuid.uuid4()
        self.id = u.bytes
        self.hex = u.hex
        self._last: tuple = (None, None)
        self.name = name
        self.functions: List[bytes] = []
        self._func_idx: Dict[bytes, int] = {}
        self.specs: List[dict] = []
        self.states: List[TaskState] = []
        self.by_key: Dict[str, TaskState] = {}

    def function(self, func: Any) -> tuple:
        """(index in the function table, digest) of `func`."""
        if self._last[0] is func:
            return self._last[1]
        blob, digest = pickle_function(func)
        i = self._func_idx.get(digest)
        if i is None:
            i = self._func_idx[digest] = len(self.functions)
            self.functions.append(blob)
        self._last = (func, (i, digest))
        return i, digest

    def existing(self, key: str) -> Optional[TaskState]:
        s = self.by_key.get(key)
        if s is None:
            s = self.client._keys.get(key)
            if s is not None and s.status == CANCELLED:
                s = None
        return s

    def add(self, func: Any, args: tuple, kwargs: dict, key: Optional[str], pure: bool, prefix: str,
            priority: int = 0, retries: int = 0, resources: Optional[dict] = None,
            time_request: Optional[float] = None) -> TaskState:
        """The task `func(*args, **kwargs)`, or the existing task of the same key."""
        fi, digest = self.function(func)
        dep_states: List[TaskState] = []
        plain = _plain(args) and (not kwargs or _plain(kwargs))
        if not plain:
            index: Dict[str, int] = {}
            args = _replace(args, index, dep_states)
            kwargs = _replace(kwargs, index, dep_states)
        blob = dump_args(args, kwargs, f"{prefix} (task {len(self.specs)} of this submission)", plain or None)
        if key is None:
            if pure:
                h = hashlib.md5(digest)
                h.update(blob)
                for d in dep_states:
                    h.update(d.key.encode())
                key = f"{prefix}-{h.hexdigest()}"
            else:
                key = f"{prefix}-{self.hex}-{len(self.specs)}"
        else:
            key = str(key)
        found = self.existing(key)
        if found is not None:
            return found
        return self.add_spec(key, {"Py": {"func": fi, "args": blob}}, dep_states, "py",
                             priority, retries, resources, time_request)

    def add_spec(self, key: str, kind: dict, dep_states: List[TaskState], result_kind: str,
                 priority: int = 0, retries: int = 0, resources: Optional[dict] = None,
                 time_request: Optional[float] = None) -> TaskState:
        spec: Dict[str, Any] = {"key": key, "kind": kind}
        if dep_states:
            spec["deps"] = [{"key": d.key} if d.job == self.id else {"job": d.job, "key": d.key}
                            for d in dep_states]
        if priority:
            spec["priority"] = int(priority)
        if retries:
            spec["retries"] = int(retries)
        if resources:
            spec["resources"] = {str(k): int(v) for k, v in resources.items()}
        if time_request is not None:
            if not time_request >= 0:
                raise ValueError(f"time_request must be a number of seconds >= 0, not {time_request!r}")
            spec["time_request_ms"] = int(time_request * 1000)
        state = TaskState(key, self.id, len(self.specs), result_kind, dep_states)
        self.specs.append(spec)
        self.states.append(state)
        self.by_key[key] = state
        return state

    def frame(self) -> dict:
        body: Dict[str, Any] = {"job": self.id, "name": self.name, "tasks": self.specs}
        if self.functions:
            body["functions"] = self.functions
        return {"Submit": body}
