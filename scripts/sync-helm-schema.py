#!/usr/bin/env python3
"""Copies the entitlement-gate library chart's values schema into an including chart's schema.

    scripts/sync-helm-schema.py [--check] CHART_SCHEMA [KEY]

Writes helm/entitlement-gate/values.schema.json (less `$schema` and `global`) to
CHART_SCHEMA's `properties.KEY` (default `entitlementGate`; a dotted path such as
`myProduct.gate` nests it), so that `helm install` refuses unknown gate keys and a missing product
code. Helm cannot `$ref` a schema inside a dependency (file references resolve from `/`), hence a
copy; `--check` exits 1 when the copy is out of date (CI runs it on helm/example).
"""

import json
import pathlib
import sys

LIBRARY_SCHEMA = pathlib.Path(__file__).resolve().parent.parent / "helm" / "entitlement-gate" / "values.schema.json"


def gate_schema():
    schema = json.loads(LIBRARY_SCHEMA.read_text())
    schema.pop("$schema", None)
    schema["properties"].pop("global", None)
    return schema


def main(argv):
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    if not 1 <= len(args) <= 2:
        sys.exit(__doc__)
    path = pathlib.Path(args[0])
    keys = (args[1] if len(args) == 2 else "entitlementGate").split(".")
    chart = json.loads(path.read_text())
    node = chart
    for key in keys[:-1]:
        node = node.setdefault("properties", {}).setdefault(key, {"type": "object"})
    properties = node.setdefault("properties", {})
    wanted = gate_schema()
    if check:
        if properties.get(keys[-1]) != wanted:
            sys.exit(f"{path}: properties.{'.'.join(keys)} differs from {LIBRARY_SCHEMA.name}; "
                     f"run: python3 scripts/sync-helm-schema.py {path}")
        print(f"{path}: properties.{'.'.join(keys)} matches the library schema")
        return
    properties[keys[-1]] = wanted
    path.write_text(json.dumps(chart, indent=2) + "\n")
    print(f"wrote properties.{'.'.join(keys)} of {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
