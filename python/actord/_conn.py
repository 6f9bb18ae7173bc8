"""The wire: finding the scheduler file, 4-byte big-endian length frames of
msgpack with named fields, TLS pinned to the scheduler's certificate, and the
challenge-response handshake (docs/protocol.md)."""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import re
import socket
import ssl
import stat
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import msgpack

PROTOCOL = 2
MAGIC = "actord"
NONCE_LEN = 32
_SCHEDULER_LABEL = b"actord-v2 scheduler proof"
_PEER_LABEL = b"actord-v2 peer proof"
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
        check_private(path)
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


def check_private(path: Path) -> None:
    """Refuses a scheduler file that others may read or write (it holds the secret)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        raise Rejected(
            f"scheduler file {path} is accessible by others (mode {mode:04o}): it holds the cluster's "
            f"secret; run `chmod 600 {path}`"
        )


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
        raw = socket.create_connection((host, port), timeout=timeout)
        sock: Any = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = str(sf.get("mode") or "tls")
            fingerprint = str(sf.get("tls_fingerprint") or "") if mode == "tls" else ""
            if mode == "tls":
                if not fingerprint:
                    raise Rejected("the scheduler file asks for TLS but pins no certificate (tls_fingerprint)")
                sock = _TlsSocket(raw, fingerprint)
            conn = Conn(sock, uuid.UUID(int=0), 0, str(sf["address"]))
            w = conn._handshake(sf, mode, fingerprint)
            conn.instance = uuid.UUID(bytes=bytes(w["instance"])) if len(w["instance"]) == 16 else uuid.UUID(str(w["instance"]))
            conn.epoch = int(w.get("epoch", 0))
            sock.settimeout(None)
            return conn
        except BaseException:
            sock.close()
            raise

    def _handshake(self, sf: dict, mode: str, fingerprint: str) -> dict:
        """`Hello`, then the challenge: checks the scheduler's proof, sends ours."""
        nonce = os.urandom(NONCE_LEN)
        self.send({
            "magic": MAGIC,
            "protocol": PROTOCOL,
            "role": "Client",
            "nonce": nonce,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": _user(),
            "epoch": int(sf.get("epoch") or 0),
        })
        reply = self.recv()
        if isinstance(reply, dict) and "Challenge" in reply:
            secret = str(sf.get("secret") or "").encode()
            if not secret:
                raise Rejected("the scheduler asks for authentication, but the scheduler file has no secret")
            theirs = bytes(reply["Challenge"]["nonce"])
            proof = bytes(reply["Challenge"]["proof"])
            expected = _proof(secret, _SCHEDULER_LABEL, nonce, theirs, fingerprint)
            if len(theirs) != NONCE_LEN or not hmac.compare_digest(expected, proof):
                raise Rejected(
                    "the scheduler could not prove it knows the scheduler file's secret: the file is stale "
                    "or wrong, or this is not the scheduler it names"
                )
            self.send({"proof": _proof(secret, _PEER_LABEL, nonce, theirs, fingerprint)})
            reply = self.recv()
        elif isinstance(reply, dict) and "Welcome" in reply and mode != "insecure":
            raise Rejected(
                "the scheduler accepted the connection without proving it knows the secret "
                "(it runs --insecure, or it is not the scheduler the scheduler file names): refusing it"
            )
        if isinstance(reply, dict) and "Rejected" in reply:
            raise Rejected(f"scheduler refused the connection: {reply['Rejected'].get('error')}")
        if not (isinstance(reply, dict) and "Welcome" in reply):
            raise ConnectError(f"unexpected handshake reply from {sf['address']}: {reply!r:.200}")
        return reply["Welcome"]

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


def _proof(secret: bytes, label: bytes, client: bytes, server: bytes, fingerprint: str) -> bytes:
    """HMAC-SHA256 of who proves, our role, both nonces and the pinned certificate."""
    msg = label + b"\0" + b"Client" + b"\0" + client + server + fingerprint.encode()
    return hmac.new(secret, msg, hashlib.sha256).digest()


class _TlsSocket:
    """TLS over a blocking socket through memory BIOs, so that one thread may
    `recv` while others `sendall`: the SSL object is touched only under a lock,
    never while waiting on the network. The certificate is pinned by its
    SHA-256 (the scheduler's is self-signed), not checked against a CA."""

    def __init__(self, sock: socket.socket, fingerprint: str):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_side=False, server_hostname="actord")
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectError("the scheduler closed the connection during the TLS handshake")
        self._flush()
        der = self._tls.getpeercert(binary_form=True) or b""
        got = hashlib.sha256(der).hexdigest()
        if not hmac.compare_digest(got, fingerprint.lower()):
            raise Rejected(
                f"the scheduler's certificate (sha256 {got}) is not the one the scheduler file pins "
                f"(sha256 {fingerprint}): someone else may be listening there, or the file is stale"
            )

    def _fill(self) -> bool:
        data = self._sock.recv(1 << 16)
        if not data:
            self._in.write_eof()
            return False
        with self._lock:
            self._in.write(data)
        return True

    def _flush(self) -> None:
        with self._send_lock:
            with self._lock:
                out = self._out.read()
            if out:
                self._sock.sendall(out)

    def sendall(self, data: bytes) -> None:
        with self._send_lock:
            with self._lock:
                self._tls.write(data)
                out = self._out.read()
            self._sock.sendall(out)

    def recv(self, n: int) -> bytes:
        while True:
            with self._lock:
                try:
                    data = self._tls.read(n)
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLZeroReturnError:
                    return b""
                pending = self._out.pending
            if pending:
                self._flush()  # e.g. a key update's answer
            if data is not None:
                return data
            if not self._fill():
                return b""

    def settimeout(self, t: Optional[float]) -> None:
        self._sock.settimeout(t)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()


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
