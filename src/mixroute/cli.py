"""`mixroute` command line. Each subcommand lives in its component's `main.py`, which
defines `add_arguments(parser)` and `run(args) -> int`; this module only dispatches.
Component modules are imported lazily so `mixroute --help` stays fast and a component's
heavy dependencies (torch, presidio) load only when that component runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mixroute import __version__

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("mixroute.up.main", "start router + frontend + workers on this machine"),
    "router": ("mixroute.router.main", "semantic router (OpenAI proxy or Envoy ext_proc server)"),
    "frontend": ("mixroute.frontend.main", "OpenAI API frontend with KV-aware routing"),
    "worker": ("mixroute.worker.main", "prefill / decode / aggregated worker hosting an engine"),
    "planner": ("mixroute.planner.main", "scales prefill and decode workers from load"),
    "runtime": ("mixroute.runtime.main", "inspect discovery and events; run local etcd + nats-server"),
    "model": ("mixroute.engine.model.main", "prepare models (convert the packaged SmolLM2 GGUF)"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is not None:
                out[name] = (module, help_text)
        except ModuleNotFoundError:
            continue
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    parser = argparse.ArgumentParser(
        prog="mixroute",
        description="mixroute: semantic router + KV-aware frontend + paged-KV workers.",
    )
    parser.add_argument("--version", action="version", version=f"mixroute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(commands[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
