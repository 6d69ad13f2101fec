"""Garbage-collection probe for benchmark processes (not part of mixroute).

Put this directory first on PYTHONPATH and set MIXROUTE_BENCH_GC_LOG=/some/prefix: every
Python process started so (client, frontend, workers) appends one JSON line per
collection to `<prefix>.<pid>`: generation, pause in ms, objects collected, wall time, and
the process's command line on the first line. Used to measure the frontend's full
collections (bench/results/routing.md):

    PYTHONPATH=bench/peers/gc_probe MIXROUTE_BENCH_GC_LOG=/tmp/gc/log \\
        python bench/routing.py --systems ours-kv --no-aiperf --sweep ''
"""

from __future__ import annotations

import os

_prefix = os.environ.get("MIXROUTE_BENCH_GC_LOG")
if _prefix:
    import gc
    import json
    import sys
    import time

    _out = open(f"{_prefix}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 - open for the process's life
    _out.write(json.dumps({"argv": sys.orig_argv}) + "\n")
    _started = [0.0]

    def _on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _started[0]) * 1e3
        _out.write(json.dumps({"gen": info["generation"], "ms": round(ms, 3), "collected": info["collected"], "t": time.time()}) + "\n")

    gc.callbacks.append(_on_gc)
