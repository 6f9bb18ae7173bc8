"""Stored results: a result over the workers' `worker.inline_result` is a file
of the results store, and the scheduler sends only where it is. It is read
from the store where this host sees it (`$ACTORD_RESULTS_DIR`, else the
scheduler file's `results_dir`), else streamed through the scheduler in
pieces of 1 MiB; its size and SHA-256 are checked either way."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Callable, Optional

__all__ = ["StoredRef", "StoredResultError", "StoredResultLost", "read_local", "verify"]

_PATH = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/[0-9]{1,10}-[0-9]{1,10}\.bin\Z")


class StoredResultError(RuntimeError):
    """A stored result is missing or corrupt (or its reference is refused)."""


class StoredResultLost(StoredResultError):
    """A stored result is missing or corrupt: its task can run again."""


class StoredRef:
    """Where a task's result is in the results store; `load()` reads it."""

    __slots__ = ("path", "size", "checksum", "_load")

    def __init__(self, ref: dict, load: Callable[["StoredRef"], bytes]):
        path, size, checksum = ref.get("path"), ref.get("size"), ref.get("checksum")
        if not isinstance(path, str) or not _PATH.match(path):
            raise StoredResultError(f"refused a stored-result reference {str(path)[:200]!r}")
        if not isinstance(size, int) or size < 0 or not isinstance(checksum, str):
            raise StoredResultError(f"a stored-result reference without a size or checksum: {path}")
        self.path, self.size, self.checksum, self._load = path, size, checksum.lower(), load

    def load(self) -> bytes:
        return self._load(self)

    def __repr__(self) -> str:
        return f"StoredRef({self.path!r}, {self.size} bytes)"


def verify(ref: StoredRef, data: bytes) -> bytes:
    if len(data) != ref.size:
        raise StoredResultLost(f"stored result {ref.path} is corrupt: {len(data)} bytes where {ref.size} were written")
    if hashlib.sha256(data).hexdigest() != ref.checksum:
        raise StoredResultLost(f"stored result {ref.path} is corrupt: checksum mismatch")
    return data


def store_dir(scheduler_file: dict) -> Optional[str]:
    return os.environ.get("ACTORD_RESULTS_DIR") or scheduler_file.get("results_dir")


def read_local(directory: Optional[str], ref: StoredRef) -> Optional[bytes]:
    """The checked bytes from the store, or None if this host cannot see the file."""
    if not directory:
        return None
    try:
        with open(os.path.join(directory, ref.path), "rb") as f:
            data = f.read(ref.size + 1)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    return verify(ref, data)
