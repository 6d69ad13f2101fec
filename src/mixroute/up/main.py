"""`mixroute up`: the semantic router, the frontend and workers on this machine, one command.

Parses flags, prepares the model in this process (with a progress bar, so the workers
start from a ready directory), then hands over to `stack.run_stack`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from mixroute.errors import ConfigError, MixrouteError
from mixroute.logs import setup_logging
from mixroute.up import options as up_options
from mixroute.up.plan import ModelChoice
from mixroute.up.stack import run_stack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    up_options.add_arguments(parser)


def resolve_model(options: up_options.UpOptions) -> ModelChoice:
    if options.model is not None:
        path = options.model
    else:
        try:
            from mixroute.engine.model.smollm2 import default_model_path
        except ImportError:
            raise ConfigError(
                "the default model needs mixroute.engine.model.smollm2 (not installed); pass --model DIR"
            ) from None
        print(
            "preparing SmolLM2-135M-Instruct (converted once from the packaged GGUF, then cached) ...",
            flush=True,
        )
        path = Path(default_model_path())
        print(f"  ok  model at {path}", flush=True)
    return ModelChoice(path=path, served_name=options.served_model_name or path.name)


def run(args: argparse.Namespace) -> int:
    setup_logging(component="up")
    try:
        options = up_options.options_from_args(args)
        model = resolve_model(options)
        return asyncio.run(run_stack(options, model, sys.stdout))
    except MixrouteError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        # Only reachable while the model is being prepared: no child runs yet.
        print("interrupted", file=sys.stderr)
        return 130
