"""`mixroute up` with the fake components of fake_components.py as its children.

python run_up_with_fakes.py <mixroute up flags>
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

from mixroute.errors import MixrouteError
from mixroute.up.options import add_arguments, options_from_args
from mixroute.up.plan import ModelChoice
from mixroute.up.stack import run_stack


def main() -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = options_from_args(parser.parse_args())
    fake = str(Path(__file__).with_name("fake_components.py"))
    options = dataclasses.replace(options, child_command=(sys.executable, fake))
    try:
        return asyncio.run(
            run_stack(options, ModelChoice(Path("/fake/model"), "fake-model"), sys.stdout)
        )
    except MixrouteError as exc:
        print(f"error: {exc}", flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
