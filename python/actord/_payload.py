"""Task payloads shared by the client and the executor: pickling, and the
`Dep` placeholders that stand for a task's dependency results in its args."""

from __future__ import annotations

import pickle
from typing import Any, List

import cloudpickle

__all__ = ["Dep", "dumps", "loads", "substitute"]


class Dep:
    """A placeholder for the i-th dependency's result (index into `deps`)."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i

    def __repr__(self) -> str:
        return f"Dep({self.i})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dep) and other.i == self.i

    def __hash__(self) -> int:
        return hash((Dep, self.i))

    def __reduce__(self):
        return (Dep, (self.i,))


def dumps(obj: Any) -> bytes:
    """Pickle anything cloudpickle can, functions and lambdas included."""
    return cloudpickle.dumps(obj, protocol=5)


def loads(b: bytes) -> Any:
    return pickle.loads(b)


def substitute(obj: Any, inputs: List[Any]) -> Any:
    """A copy of `obj` with every `Dep(i)` inside lists, tuples, dicts (keys
    and values), sets and frozensets replaced by `inputs[i]`; other objects
    are returned unchanged."""
    t = type(obj)
    if t is Dep:
        return inputs[obj.i]
    if t is list:
        return [substitute(x, inputs) for x in obj]
    if t is tuple:
        return tuple(substitute(x, inputs) for x in obj)
    if t is dict:
        return {substitute(k, inputs): substitute(v, inputs) for k, v in obj.items()}
    if t is set:
        return {substitute(x, inputs) for x in obj}
    if t is frozenset:
        return frozenset(substitute(x, inputs) for x in obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return t(*(substitute(x, inputs) for x in obj))
    return obj
