#!/usr/bin/env bash
# Packages the library chart and the example chart for an OCI registry (Amazon ECR, for instance),
# adding the metadata only their publisher knows: where the project lives (home, sources, icon,
# Artifact Hub links). The committed Chart.yaml files leave these out because this repository is
# vendored and republished by each seller under their own address.
#
#   scripts/package-charts.sh --home URL --source URL [--icon URL] [--out DIR] [--push oci://HOST/NAMESPACE] [HELM]
#
# With --push the example chart depends on the library at that registry (as a seller's chart would)
# and both are pushed with `helm push` (log in first: `helm registry login`).
set -euo pipefail
cd "$(dirname "$0")/.."
home="" source="" icon="" out=dist/charts push="" helm=helm
while [ $# -gt 0 ]; do
  case "$1" in
    --home) home=$2; shift 2 ;;
    --source) source=$2; shift 2 ;;
    --icon) icon=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --push) push=$2; shift 2 ;;
    -*) echo "package-charts.sh: unknown option $1" >&2; exit 2 ;;
    *) helm=$1; shift ;;
  esac
done
[ -n "$home" ] && [ -n "$source" ] || { echo "package-charts.sh: --home and --source are required" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# -L: the example's charts/entitlement-gate is a symlink to the library; package a real copy.
cp -RL helm/entitlement-gate helm/example "$work/"
for chart in entitlement-gate example; do
  file="$work/$chart/Chart.yaml"
  {
    echo "home: $home"
    printf 'sources:\n  - %s\n' "$source"
    [ -z "$icon" ] || echo "icon: $icon"
  } >> "$file"
  # Artifact Hub shows these links on the package page.
  sed -i "s|^annotations:$|annotations:\n  artifacthub.io/links: \|\n    - name: source\n      url: $source\n    - name: documentation\n      url: $home|" "$file"
done
if [ -n "$push" ]; then
  sed -i "s|^    repository: file://../entitlement-gate$|    repository: $push|" "$work/example/Chart.yaml"
fi
mkdir -p "$out"
"$helm" package "$work/entitlement-gate" -d "$out"
"$helm" package "$work/example" -d "$out"
if [ -n "$push" ]; then
  for package in "$out"/entitlement-gate-*.tgz "$out"/example-*.tgz; do
    "$helm" push "$package" "$push"
  done
fi
