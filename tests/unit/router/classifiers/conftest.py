from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.pii import PiiDetector


class NetworkAttempted(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail any outbound connection or DNS lookup; yields the attempts it saw."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[1:] if args else kwargs))
        raise NetworkAttempted(f"network access attempted: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield attempts


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    """A loaded PII detector, one per test module (the slow PII tests share it)."""
    detector = PiiDetector()
    detector.load()
    return detector


@pytest.fixture(scope="module")
def featurizer() -> Featurizer:
    """The MiniLM WordPiece featurizer (modules may define their own)."""
    return Featurizer()
