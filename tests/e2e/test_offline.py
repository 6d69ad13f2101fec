"""`mixroute up` on a machine with no network at all (a fresh network namespace with only
loopback) and empty model caches: the model is converted from the installed package,
every component loads from installed files, the stack reaches ready and answers.

    python3 -m pytest -q --run-e2e tests/e2e/test_offline.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.stack_process import SMOLLM2, start_up, stop_up

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

_NO_NETWORK = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']

_REQUEST = """
import json, sys, httpx
r = httpx.post(sys.argv[1] + "/v1/chat/completions", timeout=600, json={
    "model": "MoM", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 16})
print(json.dumps({"status": r.status_code, "body": r.json()}))
"""


def _can_unshare_network() -> bool:
    if (
        shutil.which("unshare") is None
        or shutil.which("nsenter") is None
        or shutil.which("ip") is None
    ):
        return False
    probe = subprocess.run([*_NO_NETWORK, "true"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def test_up_reaches_ready_with_no_network_and_empty_caches(tmp_path: Path) -> None:
    if not _can_unshare_network():
        pytest.skip("needs unshare --net, nsenter and ip (root or user namespaces)")
    env = {
        "MIXROUTE_MODEL_CACHE": str(tmp_path / "models"),  # SmolLM2 converted afresh from the GGUF
        "HF_HOME": str(tmp_path / "hf-home"),  # nothing from a hub cache
    }
    up = start_up(tmp_path, env=env, prefix=_NO_NETWORK)
    try:
        up.wait_ready(2000)
        assert (tmp_path / "models" / SMOLLM2 / "config.json").is_file()
        # The stack lives in its own network namespace: ask from inside it.
        answer = subprocess.run(
            [
                "nsenter",
                "-t",
                str(up.proc.pid),
                "-n",
                sys.executable,
                "-c",
                _REQUEST,
                up.router_url,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert answer.returncode == 0, answer.stderr
        result = json.loads(answer.stdout.strip().splitlines()[-1])
        assert result["status"] == 200, result
        assert result["body"]["model"] == SMOLLM2
        assert result["body"]["choices"][0]["message"]["content"].strip()
        assert up.interrupt(timeout_s=120) == 0, up.output
        assert up.leftover_processes() == []
    finally:
        stop_up(up)
