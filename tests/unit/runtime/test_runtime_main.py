from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from mixroute.runtime import main as runtime_main
from mixroute.runtime.discovery import open_discovery


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    runtime_main.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_ls_prints_keys_and_bad_url_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fill() -> None:
        discovery = await open_discovery(f"file://{tmp_path}")
        await discovery.put(
            "v1/instances/dynamo/backend/generate/1a", b'{"address":"tcp://x:1"}', leased=False
        )
        await discovery.put("v1/other/k", b"\xff\xfe", leased=False)
        await discovery.close()

    asyncio.run(fill())
    assert runtime_main.run(_args("ls", "--discovery", f"file://{tmp_path}")) == 0
    assert capsys.readouterr().out.splitlines() == [
        'v1/instances/dynamo/backend/generate/1a {"address":"tcp://x:1"}',
        "v1/other/k <2 bytes>",
    ]
    assert runtime_main.run(_args("ls", "--discovery", "consul://x")) == 1
    err = capsys.readouterr().err
    assert "use file:///path/to/run-dir or etcd://HOST:PORT" in err and "Traceback" not in err
