"""The wire: finding the scheduler file, 4-byte big-endian length frames of
msgpack with named fields, and the `Hello` handshake (docs/protocol.md)."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import msgpack

PROTOCOL = 1
MAGIC = "actord"
MAX_FRAME = 64 << 20
_LEN = struct.Struct(">I")


class ConnectError(OSError):
    """The scheduler could not be reached or refused the handshake."""


class Rejected(ConnectError):
    """The scheduler answered the handshake with `Rejected`: retrying will not help."""


def expand_path(raw: str) -> Path:
    """`~` and `$VAR` / `${VAR}` expanded; an unset variable is an error (as in the CLI)."""
    s = os.path.expanduser(raw) if raw == "~" or raw.startswith("~/") else raw

    def var(m: "re.Match[str]") -> str:
        name = m.group(1) or m.group(2)
        if name not in os.environ:
            raise ValueError(f"{raw}: environment variable ${name} is not set")
        return os.environ[name]

    return Path(re.sub(r"\$\{([^}]*)\}|\$([A-Za-z0-9_]+)", var, s))


def resolve_scheduler_file(flag: Optional[str] = None) -> Path:
    """The flag, else `$ACTORD_SCHEDULER_FILE`, else `$SCRATCH/actord/scheduler.json`,
    else `./actord-scheduler.json`."""
    if flag:
        return expand_path(os.fspath(flag))
    env = os.environ.get("ACTORD_SCHEDULER_FILE")
    if env:
        return expand_path(env)
    scratch = os.environ.get("SCRATCH")
    if scratch:
        return Path(scratch) / "actord" / "scheduler.json"
    return Path("actord-scheduler.json")


def read_scheduler_file(path: Path, deadline: float) -> dict:
    """Waits (until `deadline`, a `time.monotonic()` value) for the file to exist and parse."""
    last = None
    while True:
        try:
            with open(path) as fh:
                data = json.load(fh)
            if not isinstance(data, dict) or "address" not in data or "secret" not in data:
                raise ValueError("no address or secret in it")
            return data
        except FileNotFoundError:
            last = (
                f"scheduler file {path} did not appear: is `actord scheduler --scheduler-file {path}` running?"
            )
        except (OSError, ValueError) as e:
            last = f"scheduler file {path} is not valid: {e}"
        if time.monotonic() >= deadline:
            raise ConnectError(last)
        time.sleep(0.05)


def describe(sf: dict) -> str:
    return f"written by pid {sf.get('pid')} on {sf.get('host')} at {sf.get('started')}"


def split_address(address: str) -> tuple:
    addr = address[len("tcp://"):] if address.startswith("tcp://") else address
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectError(f"bad scheduler address {address!r} (expected tcp://HOST:PORT)")
    return host.strip("[]"), int(port)


def pack(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(body)) + body


class Conn:
    """One authenticated connection: `send` from any thread, `recv` from one."""

    def __init__(self, sock: socket.socket, instance: uuid.UUID, epoch: int, address: str):
        self.sock = sock
        self.instance = instance
        self.epoch = epoch
        self.address = address
        self._wlock = threading.Lock()
        self._buf = bytearray()

    @staticmethod
    def open(sf: dict, timeout: float = 5.0) -> "Conn":
        host, port = split_address(str(sf["address"]))
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock, uuid.UUID(int=0), 0, str(sf["address"]))
            conn.send({
                "magic": MAGIC,
                "protocol": PROTOCOL,
                "role": "Client",
                "secret": str(sf["secret"]),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "user": _user(),
                "epoch": int(sf.get("epoch") or 0),
            })
            reply = conn.recv()
            if isinstance(reply, dict) and "Rejected" in reply:
                raise Rejected(f"scheduler refused the connection: {reply['Rejected'].get('error')}")
            if not (isinstance(reply, dict) and "Welcome" in reply):
                raise ConnectError(f"unexpected handshake reply from {sf['address']}: {reply!r:.200}")
            w = reply["Welcome"]
            conn.instance = uuid.UUID(bytes=bytes(w["instance"])) if len(w["instance"]) == 16 else uuid.UUID(str(w["instance"]))
            conn.epoch = int(w.get("epoch", 0))
            sock.settimeout(None)
            return conn
        except BaseException:
            sock.close()
            raise

    def send(self, obj: Any) -> None:
        self.send_raw(pack(obj))

    def send_raw(self, frame: bytes) -> None:
        with self._wlock:
            self.sock.sendall(frame)

    def _read_exact(self, n: int) -> bytes:
        buf = self._buf
        while len(buf) < n:
            chunk = self.sock.recv(max(1 << 16, n - len(buf)))
            if not chunk:
                raise ConnectionError("connection closed by the scheduler")
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def recv(self) -> Any:
        (n,) = _LEN.unpack(self._read_exact(4))
        if n > MAX_FRAME:
            raise ConnectionError(f"frame of {n} bytes from the scheduler exceeds {MAX_FRAME}")
        return msgpack.unpackb(self._read_exact(n), raw=False, strict_map_key=False)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return ""


def connect(path: Path, timeout: float) -> tuple:
    """Reads the scheduler file and connects, retrying until `timeout` seconds
    pass; returns `(conn, scheduler_file)`."""
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while True:
        sf = read_scheduler_file(path, deadline)
        try:
            return Conn.open(sf), sf
        except Rejected:
            raise
        except (OSError, ValueError, KeyError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise ConnectError(
                f"cannot reach the scheduler at {sf.get('address')} named by {path} ({describe(sf)}): "
                f"{last}; is that scheduler still running?"
            )
        time.sleep(0.05)
