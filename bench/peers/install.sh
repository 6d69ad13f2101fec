#!/usr/bin/env bash
# Install the peer routers and the independent client, each in its own virtualenv
# under .cache/peers/ (git-ignored). PyPI only. Usage:
#   bash bench/peers/install.sh [dynamo|smg|vllm-router|aiperf ...]   (default: all)
# Each install logs to .cache/peers/<name>.log and leaves .cache/peers/<name>/OK on success.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS="$ROOT/.cache/peers"
mkdir -p "$PEERS"
PY="${PYTHON:-python3}"

make_venv() {  # name -> creates venv, upgrades pip
  local name="$1"
  rm -rf "$PEERS/$name"
  "$PY" -m venv "$PEERS/$name" && "$PEERS/$name/bin/pip" install -q --upgrade pip
}

install_dynamo() {
  make_venv dynamo || return 1
  local pip="$PEERS/dynamo/bin/pip"
  # `pip install ai-dynamo==1.6.1` does not resolve here; install the runtime and the
  # python package's dependencies first, then the package itself without deps.
  "$pip" install ai-dynamo-runtime==1.6.1 'aiohttp>=3.14.3,<4' certifi 'kubernetes>=32.0.1,<33' \
    'msgspec>=0.19' 'prometheus-client>=0.23.1,<1' 'pyzmq>=26' 'redis>=6.2,<9' tqdm \
    'transformers>=4.56' 'typing-extensions>=4.10' 'zstandard>=0.23,<1' || return 1
  "$pip" install --no-deps ai-dynamo==1.6.1 || return 1
  "$PEERS/dynamo/bin/python" -c "import dynamo.frontend, dynamo.mocker" || return 1
}

install_smg() {
  make_venv smg || return 1
  "$PEERS/smg/bin/pip" install smg || return 1
  "$PEERS/smg/bin/smg" --help >/dev/null 2>&1 || "$PEERS/smg/bin/python" -m smg --help >/dev/null || return 1
}

install_vllm_router() {
  make_venv vllm-router || return 1
  "$PEERS/vllm-router/bin/pip" install vllm-router || return 1
  "$PEERS/vllm-router/bin/vllm-router" --help >/dev/null 2>&1 || return 1
}

install_aiperf() {
  make_venv aiperf || return 1
  "$PEERS/aiperf/bin/pip" install aiperf || return 1
  "$PEERS/aiperf/bin/aiperf" --help >/dev/null || return 1
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(dynamo smg vllm-router aiperf)
status=0
for t in "${targets[@]}"; do
  fn="install_${t//-/_}"
  echo "== installing $t (log: $PEERS/$t.log)"
  if "$fn" >"$PEERS/$t.log" 2>&1; then
    touch "$PEERS/$t/OK"; echo "   $t: OK"
  else
    echo "   $t: FAILED (tail of log follows)"; tail -5 "$PEERS/$t.log"; status=1
  fi
done
exit $status
