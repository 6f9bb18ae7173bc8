"""`Client.get` as Dask's scheduler: dask.array, dask.delayed, dask.bag and
raw graphs give what Dask's synchronous scheduler gives."""

from __future__ import annotations

import operator
import sys

import cloudpickle
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
np = pytest.importorskip("numpy")

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def test_dask_array_matches_the_sync_scheduler(client):
    x = da.random.default_rng(42).random((300, 300), chunks=(70, 70))
    y = (x + x.T).sum()
    expected = y.compute(scheduler="sync")
    assert y.compute(scheduler=client.get) == pytest.approx(expected, rel=1e-12)
    z = (x + x.T)[::7, 3:50]
    np.testing.assert_array_equal(z.compute(scheduler=client.get), z.compute(scheduler="sync"))
    with dask.config.set(scheduler=client.get):
        assert float(x.mean().compute()) == pytest.approx(float(x.mean().compute(scheduler="sync")))


def test_dask_delayed_and_bag(client):
    from dask import delayed
    import dask.bag as db

    leaves = [delayed(inc)(i) for i in range(20)]
    while len(leaves) > 1:
        leaves = [delayed(operator.add)(a, b) for a, b in zip(leaves[::2], leaves[1::2])] + (
            [leaves[-1]] if len(leaves) % 2 else [])
    total = leaves[0]
    assert dask.compute(total, scheduler=client.get) == dask.compute(total, scheduler="sync")
    both = dask.compute({"t": total, "l": [delayed(inc)(1), delayed(lambda: "x")()]}, scheduler=client.get)
    assert both == ({"t": 210, "l": [2, "x"]},)
    b = db.from_sequence(range(100), npartitions=5).map(lambda v: v * 3).filter(lambda v: v % 2)
    assert b.sum().compute(scheduler=client.get) == b.sum().compute(scheduler="sync")
    assert sorted(b.compute(scheduler=client.get)) == sorted(b.compute(scheduler="sync"))


def test_raw_graphs_nested_keys_and_errors(client):
    dsk = {"a": 1, "b": (inc, "a"), "c": (operator.add, "a", "b"), "d": (sum, ["a", "b", "c"]),
           ("x", 0): (inc, "d"), "e": "c"}
    assert client.get(dsk, "d", sync=True) == 6
    assert client.get(dsk, [["a", "b"], [("x", 0)], "e"]) == [[1, 2], [7], 3]
    chain = {"k0": (inc, 0)}
    for i in range(1, 200):
        chain[f"k{i}"] = (inc, f"k{i - 1}")
    assert client.get(chain, "k199") == 200
    with pytest.raises(ZeroDivisionError):
        client.get({"z": (operator.truediv, 1, 0), "w": (inc, "z")}, "w")
    with pytest.raises(KeyError, match="nope"):
        client.get({"a": (inc, 1)}, "nope")
