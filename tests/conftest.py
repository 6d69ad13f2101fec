from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow (real models)")
    parser.addoption("--run-e2e", action="store_true", help="run end-to-end tests (whole stack)")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow")
    skip_e2e = pytest.mark.skip(reason="e2e: pass --run-e2e")
    skip_gpu = pytest.mark.skip(reason="gpu: no CUDA device")
    has_cuda = None
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "e2e" in item.keywords and not config.getoption("--run-e2e"):
            item.add_marker(skip_e2e)
        if "gpu" in item.keywords:
            if has_cuda is None:
                has_cuda = _has_cuda()
            if not has_cuda:
                item.add_marker(skip_gpu)


# ---- real etcd / nats-server for runtime integration tests (runtime helper) ----


def _missing_binary(message: str) -> None:
    """In CI a missing server is a broken setup, not a reason to skip."""
    import os

    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def etcd_server():  # type: ignore[no-untyped-def]
    """A real etcd on a free loopback port for the whole session; `.url` is etcd://..."""
    import shutil

    if shutil.which("etcd") is None:
        _missing_binary("etcd binary not found (apt-get install etcd-server, or run scripts/setup.sh)")
    from mixroute.runtime.infra import EtcdProcess

    server = EtcdProcess.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server():  # type: ignore[no-untyped-def]
    """A real nats-server (monitoring on) on free loopback ports; `.url`, `.monitor_url`."""
    import shutil

    if shutil.which("nats-server") is None:
        _missing_binary("nats-server binary not found (apt-get install nats-server, or run scripts/setup.sh)")
    from mixroute.runtime.infra import NatsProcess

    server = NatsProcess.start()
    try:
        yield server
    finally:
        server.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop milvus-lite servers while pytest's streams are open: its own atexit hook logs
    after they are closed and prints a logging traceback under the summary line."""
    import logging
    import sys

    # Its background compaction thread and the stop below log at INFO; after the session
    # the handler's stream may be pytest's closed capture.
    logging.getLogger("milvus_lite").setLevel(logging.WARNING)
    manager = sys.modules.get("milvus_lite.server_manager")
    if manager is not None:
        manager.server_manager_instance.release_all()
