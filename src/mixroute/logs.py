"""Structured logging: one line per event, `key=value` pairs after the message.

`setup_logging` is called once by each component's main; library code only calls
`logging.getLogger(__name__)`.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | None = None, component: str | None = None) -> None:
    level_name = (level or os.environ.get("MIXROUTE_LOG_LEVEL") or "INFO").upper()
    fmt = _FORMAT if component is None else f"%(asctime)s %(levelname)s [{component}] %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_name)
    for noisy in ("httpx", "httpcore", "urllib3", "asyncio", "presidio-analyzer", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def kv(**fields: object) -> str:
    """Format fields as `k=v` pairs for a log line (values with spaces are quoted)."""
    parts = []
    for key, value in fields.items():
        text = str(value)
        parts.append(f'{key}="{text}"' if " " in text else f"{key}={text}")
    return " ".join(parts)
