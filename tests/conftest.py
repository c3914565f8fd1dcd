"""Shared fixtures. Nothing in the suite may reach the network: outbound connections to
anything but loopback fail loudly, so an accidental download is a test failure."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterator

import pytest

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address, *args, **kwargs):  # type: ignore[no-untyped-def]
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and self.family in (socket.AF_INET, socket.AF_INET6):
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise RuntimeError(f"test tried to reach the network ({host}); tests must not download")
    return _real_connect(self, address, *args, **kwargs)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Dense checkpoints made by tests go to a per-session folder, never the user's cache; set
    # for the whole session, so module-scoped fixtures (a store of earlier searches) and the
    # tests that use them read one cache, not two dense models under one key.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNETUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left_running() -> Iterator[None]:
    # Tune starts a local Ray itself when a test runs a search without `local_ray` (a benchmark
    # script's main, say); left running, it makes every later module's `ray.init` fail.
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray runtime (2 CPUs) for the tests of one module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
