"""actord: a fault-tolerant, Dask-style distributed task system (Python side)."""
