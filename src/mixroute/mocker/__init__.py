"""Mocker: the engine's scheduler and block pool with a timing model in place of the
forward pass (see README.md). Heavy modules load lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mixroute.mocker.config import MockerConfig, add_mocker_arguments, mocker_config_from_args
    from mixroute.mocker.engine import MockerEngine
    from mixroute.mocker.fleet import build_mockers, run_mockers
    from mixroute.mocker.timing import TimingModel

_EXPORTS = {
    "MockerConfig": "mixroute.mocker.config",
    "add_mocker_arguments": "mixroute.mocker.config",
    "mocker_config_from_args": "mixroute.mocker.config",
    "MockerEngine": "mixroute.mocker.engine",
    "build_mockers": "mixroute.mocker.fleet",
    "run_mockers": "mixroute.mocker.fleet",
    "TimingModel": "mixroute.mocker.timing",
}

__all__ = [
    "MockerConfig",
    "MockerEngine",
    "TimingModel",
    "add_mocker_arguments",
    "build_mockers",
    "mocker_config_from_args",
    "run_mockers",
]


def __getattr__(name: str) -> Any:
    import importlib

    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
