"""`Client.get`: Dask's scheduler interface. A Dask graph becomes one job of
`Py` tasks: a plain `Task` calls its own function with `Dep(i)` markers for
its inputs; any other node is shipped whole and run by `run_node`."""

from __future__ import annotations

from typing import Any, Dict, List

from ._payload import Dep
from ._submit import JobBuilder, dump_args
from .future import FINISHED, Future, TaskState, wait


def run_node(node: Any, keys: tuple, values: list) -> Any:
    """Executor side: a Dask graph node evaluated with its inputs by key."""
    if isinstance(node, tuple):  # a legacy tuple task (dask without _task_spec)
        from dask.core import _execute_task
        return _execute_task(node, dict(zip(keys, values)))
    return node(dict(zip(keys, values)))


def identity(x: Any) -> Any:
    return x


def _wire_key(key: Any) -> str:
    return key if isinstance(key, str) else repr(key)


def _flatten(keys: Any, out: list) -> list:
    if isinstance(keys, list):
        for k in keys:
            _flatten(k, out)
    else:
        out.append(keys)
    return out


def _nest(keys: Any, results: Dict[Any, Any]) -> Any:
    if isinstance(keys, list):
        return [_nest(k, results) for k in keys]
    return results[keys]


def _toposort(deps: Dict[Any, List[Any]]) -> List[Any]:
    """Keys in an order where every key comes after its dependencies (iterative DFS)."""
    order: List[Any] = []
    state: Dict[Any, int] = {}
    for root in deps:
        if root in state:
            continue
        stack = [(root, iter(deps[root]))]
        state[root] = 1
        while stack:
            key, it = stack[-1]
            for d in it:
                s = state.get(d)
                if s is None:
                    state[d] = 1
                    stack.append((d, iter(deps[d])))
                    break
                if s == 1:
                    raise ValueError(f"the Dask graph has a cycle through {d!r}")
            else:
                stack.pop()
                state[key] = 2
                order.append(key)
    return order


def _convert(dsk: Any) -> tuple:
    """(nodes by key, dependencies by key) with the installed Dask's graph API."""
    from collections.abc import Mapping
    if not isinstance(dsk, Mapping):  # a Dask expression (dask.compute passes those)
        dsk = dsk.__dask_graph__()
    dsk = dict(dsk)
    try:
        from dask._task_spec import convert_legacy_graph
    except ImportError:
        from dask.core import get_dependencies
        return dsk, {k: sorted(get_dependencies(dsk, k), key=repr) for k in dsk}
    nodes = convert_legacy_graph(dsk)
    return nodes, {k: sorted(n.dependencies, key=repr) for k, n in nodes.items()}


def _fast_call(node: Any, index: Dict[Any, int]):
    """(func, args, kwargs) with `Dep` markers when `node` is a plain call whose
    arguments are literals or direct references; None otherwise."""
    try:
        from dask._task_spec import Alias, DataNode, GraphNode, Task, TaskRef
    except ImportError:
        return None

    def arg(a: Any):
        if isinstance(a, TaskRef):
            return Dep(index[a.key])
        if type(a) is Alias:
            return Dep(index[a.target])
        if isinstance(a, GraphNode):
            raise LookupError
        return a

    t = type(node)
    try:
        if t is Task:
            return node.func, tuple(arg(a) for a in node.args), {k: arg(v) for k, v in node.kwargs.items()}
        if t is Alias:
            return identity, (Dep(index[node.target]),), {}
        if t is DataNode:
            return identity, (node.value,), {}
    except LookupError:
        return None
    return None


def get(client, dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """Runs the graph `dsk` as one job and returns the results of `keys`
    (a key, or nested lists of keys, giving nested lists of results)."""
    nodes, deps = _convert(dsk)
    wanted = _flatten(keys, [])
    for k in wanted:
        if k not in nodes:
            raise KeyError(f"key {k!r} is not in the Dask graph")
    for k, ds in deps.items():
        for d in ds:
            if d not in nodes:
                raise KeyError(f"task {k!r} of the Dask graph depends on {d!r}, which is not in it")
    b = JobBuilder(client, "dask")
    states: Dict[Any, TaskState] = {}
    for key in _toposort(deps):
        node, dkeys = nodes[key], deps[key]
        index = {d: i for i, d in enumerate(dkeys)}
        fast = _fast_call(node, index)
        func, args, kw = fast if fast is not None else (run_node, (node, tuple(dkeys), [Dep(i) for i in range(len(dkeys))]), {})
        fi, _ = b.function(func)
        blob = dump_args(args, kw, f"Dask task {key!r}")
        states[key] = b.add_spec(_wire_key(key), {"Py": {"func": fi, "args": blob}},
                                 [states[d] for d in dkeys], "py")
    client._submit_job(b)
    futures = {k: Future(states[k], client) for k in wanted}
    wait(list(futures.values()))
    results = {}
    for k, f in futures.items():
        if f.status != FINISHED:
            raise f._exception()
        results[k] = f.result()
    return _nest(keys, results)
