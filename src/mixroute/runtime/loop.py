"""The event loop components run on: uvloop when installed (the request plane's round
trip is about 2x faster on it), plain asyncio otherwise or with MIXROUTE_EVENT_LOOP=asyncio.

    from mixroute.runtime.loop import run_main
    return run_main(serve(args))      # instead of asyncio.run(serve(args))
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uvloop_wanted() -> bool:
    if os.environ.get("MIXROUTE_EVENT_LOOP", "uvloop").lower() == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run_main(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the preferred loop."""
    if uvloop_wanted():
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
