"""The Python client's side of security: TLS pinned by fingerprint, the
challenge-response handshake, and refusing a scheduler file others can read."""

from __future__ import annotations

import json
import os
import time

import pytest

from actord import ConnectError


def _copy(cluster, name: str, perms: int, **changes) -> str:
    sf = dict(cluster.read_sf(), **changes)
    path = cluster.tmp / name
    path.write_text(json.dumps(sf))
    os.chmod(path, perms)
    return str(path)


def test_tls_is_on_and_a_job_runs(cluster):
    sf = cluster.read_sf()
    assert sf["mode"] == "tls" and len(sf["tls_fingerprint"]) == 64
    with cluster.client() as c:
        assert c.submit(sum, [1, 2, 3]).result(timeout=60) == 6


def test_a_scheduler_file_others_can_read_is_refused_at_once(cluster):
    from actord import Client
    path = _copy(cluster, "exposed.json", 0o644)
    t0 = time.monotonic()
    with pytest.raises(ConnectError, match=r"accessible by others \(mode 0644\).*chmod 600"):
        Client(scheduler_file=path, timeout=30)
    assert time.monotonic() - t0 < 5


def test_another_certificate_or_secret_is_refused(cluster):
    from actord import Client
    path = _copy(cluster, "pinned.json", 0o600, tls_fingerprint="ab" * 32)
    with pytest.raises(ConnectError, match="not the one the scheduler file pins"):
        Client(scheduler_file=path, timeout=5)
    path = _copy(cluster, "secret.json", 0o600, secret="0123456789abcdef0123")
    with pytest.raises(ConnectError, match="could not prove it knows"):
        Client(scheduler_file=path, timeout=5)
    path = _copy(cluster, "plain.json", 0o600, mode="no-tls")
    with pytest.raises(ConnectError, match="requires TLS"):
        Client(scheduler_file=path, timeout=5)


def test_no_tls_still_authenticates(make_cluster):
    cluster = make_cluster(workers=1, flags=("--no-tls",))
    assert cluster.read_sf()["mode"] == "no-tls"
    with cluster.client() as c:
        assert c.submit(sum, [4, 5]).result(timeout=60) == 9
    from actord import Client
    path = _copy(cluster, "secret.json", 0o600, secret="0123456789abcdef0123")
    with pytest.raises(ConnectError, match="could not prove it knows"):
        Client(scheduler_file=path, timeout=5)
