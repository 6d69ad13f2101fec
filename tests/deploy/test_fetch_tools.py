"""scripts/fetch-tools.sh: a failed fetch stops CI, but not a developer's setup."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fetch-tools.sh"


@pytest.mark.parametrize(("extra_env", "status"), [({"CI": "true"}, 1), ({"FETCH_TOOLS_STRICT": "1"}, 1), ({}, 0)])
def test_a_failed_fetch_fails_only_when_strict(tmp_path: Path, extra_env: dict[str, str], status: int) -> None:
    # A copy in an empty tree (no .tools/bin/helm), with a Python that cannot run pip.
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "fetch-tools.sh")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "FETCH_TOOLS_STRICT")}
    env.update(extra_env, PYTHON="false")
    out = subprocess.run(["bash", str(tmp_path / "scripts" / "fetch-tools.sh")], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == status, out.stderr
    assert "fetch-tools:" in out.stderr
    assert not (tmp_path / ".tools" / "bin" / "helm").exists()
