"""actord's Python client: Dask's futures API (`Client.submit`, `map`,
`gather`, `as_completed`, `wait`) and `Client.get` for Dask collections."""

from .client import Client, SchedulerError
from ._conn import ConnectError
from .future import (Future, FutureCancelledError, RemoteTraceback, ResultError, TaskError,
                     as_completed, wait)

__all__ = ["Client", "Future", "as_completed", "wait", "ConnectError", "SchedulerError",
           "FutureCancelledError", "RemoteTraceback", "ResultError", "TaskError"]
__version__ = "0.1.0"
