"""A worker instance's discovery record names addresses others can reach."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx

from mixroute.protocol.messages import InstanceInfo, decode_json
from mixroute.runtime.options import open_runtime
from mixroute.worker.instance import WorkerInstance
from mixroute.worker.main import add_arguments, settings_from_args


async def test_http_port_0_advertises_the_bound_port(tmp_path: Path) -> None:
    from mixroute.testing.tiny_model import build_tokenizer

    build_tokenizer(tmp_path / "tok")
    (tmp_path / "tok" / "config.json").write_text('{"vocab_size": 512, "max_position_embeddings": 256}')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--engine", "mocker", "--model", str(tmp_path / "tok"), "--served-model-name", "m", "--http-port", "0",
         "--namespace", "ns-inst", "--discovery", f"file://{tmp_path / 'disc'}"]
    )  # fmt: skip
    runtime = await open_runtime(args)
    instance = WorkerInstance(args, settings_from_args(args), 0xABC)
    try:
        await instance.start(runtime, port=0)
        (value,) = (await runtime.discovery.get_prefix("v1/instances/ns-inst/")).values()
        info: InstanceInfo = decode_json(value, InstanceInfo)
        assert info.http_address is not None and not info.http_address.endswith(":0")
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(f"{info.http_address}/health", timeout=10)
        assert r.status_code == 200 and r.json()["models"] == ["m"]
        assert instance.failure() is None
    finally:
        await instance.stop()
        await runtime.close()
