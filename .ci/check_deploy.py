#!/usr/bin/env python3
"""Checks every deploy file with the tools users' pipelines run, plus assertions on what matters.

Usage: check_deploy.py HELM_BINARY KUBECTL_BINARY

- Helm: both charts linted; the example chart rendered with the gate off and on and in every
  feature's variation (image digest and global registry, locked image, extraEnv and CA bundle,
  securityContext merge, pod labels and annotations, each mesh strategy, the metering sidecar as a
  native sidecar on 1.29 and 1.37 and as a container on 1.28), each render validated against the
  Kubernetes JSON schemas (kubernetes-validate, strict) and checked field by field; values that
  must be refused are; the example's schema is the library's; the packaged charts carry their
  metadata.
- deploy/kubernetes: every overlay (and a Linkerd combination) built with kustomize, validated
  like the chart, and checked field by field.
- deploy/ecs: both task definitions (placeholders filled in) against botocore's
  RegisterTaskDefinition input shape and the dependency, timeout and health-check rules;
  cloudformation.yaml (cfn-lint runs separately) resolved for each combination of its conditions
  and held to the same rules.
- deploy/iam: the documents grant exactly RegisterUsage and exactly MeterUsage.
- No AWS Region written into any deploy file, chart or the Dockerfile.
- Dockerfile: cross-compiling builder, cache mounts, base image, user, entrypoint.
"""

import copy
import itertools
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "example"
LIBRARY = ROOT / "helm" / "entitlement-gate"
# The oldest and newest Kubernetes versions the manifests are validated against; the metering
# sidecar is a native sidecar from 1.29, a regular container on 1.28.
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
GATE = "entitlement-gate"
METER = "entitlement-gate-meter"
LICENSE = "entitlement-gate-license"
PRODUCT_LICENSE = "/var/run/secrets/product-license"
MESH_ENV = {
    "ENTITLEMENT_GATE_ISTIO_SIDECAR_STATUS": {"fieldRef": {"fieldPath": "metadata.annotations['sidecar.istio.io/status']"}},
    "ENTITLEMENT_GATE_LINKERD_PROXY_VERSION": {"fieldRef": {"fieldPath": "metadata.annotations['linkerd.io/proxy-version']"}},
}
HANDOFF_PATH = "/var/run/entitlement-gate"
KEY_FILE = "/etc/entitlement-gate/public-key/public-key.pem"
PEM = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"
DIGEST = "sha256:" + "ab" * 32
RECOMMENDED = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
               "app.kubernetes.io/managed-by"]
REGION = re.compile(r"\b(us|eu|ap|sa|ca|me|af|il|mx|cn)-(gov-)?(east|west|north|south|central|northeast|"
                    r"southeast|northwest|southwest)-[0-9]\b")
FAILURES = []
HELM = KUBECTL = None


def check(condition, message):
    if not condition:
        FAILURES.append(message)
    return condition


def run(*args, expect_ok=True):
    result = subprocess.run(list(args), capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stderr}")
    return result


def helm(*args, expect_ok=True):
    return run(HELM, *args, expect_ok=expect_ok)


def helm_args(sets, kube):
    args = ["template", "demo", str(CHART), "--kube-version", kube]
    for item in sets:
        flag = "--set-string" if item.startswith("string:") else "--set"
        args += [flag, item.removeprefix("string:")]
    return args


def render(*sets, kube="1.37.0", versions=None):
    """Renders the example chart, validates it for each Kubernetes version, returns the objects."""
    docs = [d for d in yaml.safe_load_all(helm(*helm_args(sets, kube)).stdout) if d]
    validate(f"helm {' '.join(sets) or '(defaults)'}", docs, versions or KUBERNETES_VERSIONS)
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def refused(*sets, kube="1.37.0"):
    result = helm(*helm_args(sets, kube), expect_ok=False)
    return result.returncode != 0, result.stderr


def validate(label, docs, versions):
    for version in versions:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                check(False, f"{label}: kubernetes-validate {version} {doc['kind']}/{doc['metadata']['name']}: "
                             f"{error.message} at {'/'.join(map(str, error.path))}")


def one(objects, kind):
    found = [o for (k, _), o in objects.items() if k == kind]
    check(len(found) == 1, f"expected one {kind}, found {len(found)}")
    return found[0] if found else {}


def pod_spec(objects):
    return one(objects, "Deployment").get("spec", {}).get("template", {}).get("spec", {})


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def container(spec, name, where="initContainers"):
    found = [c for c in spec.get(where, []) if c["name"] == name]
    return found[0] if found else None


def app_of(spec):
    return container(spec, "app", "containers") or {}


def mounts(c):
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


WORKLOAD_ID = {"fieldRef": {"fieldPath": "metadata.uid"}}


def check_restricted(label, c):
    security = c.get("securityContext", {})
    check(security.get("runAsNonRoot") is True, f"{label}: runAsNonRoot")
    check(security.get("allowPrivilegeEscalation") is False, f"{label}: allowPrivilegeEscalation")
    check(security.get("readOnlyRootFilesystem") is True, f"{label}: readOnlyRootFilesystem")
    check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: capabilities.drop")
    check(security.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: seccompProfile")
    check(c.get("terminationMessagePolicy") == "FallbackToLogsOnError", f"{label}: terminationMessagePolicy")
    requests = c.get("resources", {}).get("requests", {})
    check({"cpu", "memory"} <= set(requests), f"{label}: resource requests {requests}")


def check_gate(label, spec, product_code, handoff=True, key=True):
    """The gate init container and what the app gets, as the chart and the manifests promise."""
    inits = spec.get("initContainers", [])
    if not check(inits and inits[0]["name"] == GATE, f"{label}: the gate must be the first init container: {[c['name'] for c in inits]}"):
        return None
    gate, app = inits[0], app_of(spec)
    env, app_env = env_of(gate), env_of(app)
    check(gate.get("args") == ["check"], f"{label}: args {gate.get('args')}")
    check_restricted(f"{label} gate", gate)
    for who, variables in (("gate", env), ("app", app_env)):
        check(variables.get("ENTITLEMENT_GATE_WORKLOAD_ID") == WORKLOAD_ID,
              f"{label}: {who} ENTITLEMENT_GATE_WORKLOAD_ID must come from the pod UID: {variables.get('ENTITLEMENT_GATE_WORKLOAD_ID')}")
        check("ENTITLEMENT_GATE_PUBLIC_KEY_VERSION" in variables, f"{label}: {who} has no key version")
        if product_code is not None:
            check(variables.get("ENTITLEMENT_GATE_PRODUCT_CODE") == product_code, f"{label}: {who} product code {variables.get('ENTITLEMENT_GATE_PRODUCT_CODE')}")
    app_mounts = mounts(app)
    if handoff:
        check(env.get("ENTITLEMENT_GATE_HANDOFF_DIR") == HANDOFF_PATH, f"{label}: gate handoff env")
        check(app_env.get("ENTITLEMENT_GATE_HANDOFF_DIR") == HANDOFF_PATH, f"{label}: app handoff env")
        check(HANDOFF_PATH in mounts(gate), f"{label}: gate handoff mount")
        check(app_mounts.get(HANDOFF_PATH, {}).get("readOnly") is True, f"{label}: app handoff mount must be read-only")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        check("emptyDir" in volumes.get("entitlement-gate-handoff", {}), f"{label}: handoff emptyDir")
    else:
        check("ENTITLEMENT_GATE_HANDOFF_DIR" not in env and HANDOFF_PATH not in app_mounts, f"{label}: handoff present when disabled")
    key_dir = KEY_FILE.rsplit("/", 1)[0]
    if key:
        check(env.get("ENTITLEMENT_GATE_PUBLIC_KEY_FILE") == KEY_FILE, f"{label}: gate key file env {env.get('ENTITLEMENT_GATE_PUBLIC_KEY_FILE')}")
        check(key_dir in mounts(gate), f"{label}: gate key mount")
    else:
        check("ENTITLEMENT_GATE_PUBLIC_KEY_FILE" not in env and key_dir not in mounts(gate), f"{label}: a locked gate must get no run-time key")
    check("ENTITLEMENT_GATE_PUBLIC_KEY" not in env, f"{label}: the key goes as a file, not inline")
    return gate


def size_bytes(quantity):
    """A Kubernetes size (`256Mi`, `1Gi`, bytes) in bytes."""
    for suffix, factor in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if str(quantity).endswith(suffix):
            return int(str(quantity)[:-2]) * factor
    return int(quantity)


def check_meter(label, spec, native, dimensions):
    where = "initContainers" if native else "containers"
    meter = container(spec, METER, where)
    if not check(meter is not None, f"{label}: no {METER} in {where}"):
        return None
    other = "containers" if native else "initContainers"
    check(container(spec, METER, other) is None, f"{label}: {METER} in {other} too")
    if native:
        names = [c["name"] for c in spec["initContainers"]]
        check(names.index(METER) > names.index(GATE), f"{label}: the meter must start after the gate: {names}")
        check(meter.get("restartPolicy") == "Always", f"{label}: a native sidecar needs restartPolicy Always")
    else:
        check("restartPolicy" not in meter, f"{label}: a regular container has no restartPolicy")
    env = env_of(meter)
    check(meter.get("args") == ["meter"], f"{label}: meter args {meter.get('args')}")
    if dimensions is not None:
        check(env.get("ENTITLEMENT_GATE_DIMENSIONS") == dimensions, f"{label}: dimensions {env.get('ENTITLEMENT_GATE_DIMENSIONS')}")
    check(env.get("ENTITLEMENT_GATE_DIMENSIONS") is not None, f"{label}: meter dimensions")
    listen = env.get("ENTITLEMENT_GATE_METER_LISTEN", "")
    check(listen.startswith("127.0.0.1:"), f"{label}: the meter must listen on loopback: {listen}")
    check(env.get("ENTITLEMENT_GATE_WORKLOAD_ID") == WORKLOAD_ID, f"{label}: meter workload id")
    state = env.get("ENTITLEMENT_GATE_STATE_DIR")
    check(state and state in mounts(meter), f"{label}: meter state dir {state} not mounted")
    check(re.fullmatch(r"[0-9]+s", str(env.get("ENTITLEMENT_GATE_SHUTDOWN_GRACE", ""))), f"{label}: shutdown grace {env.get('ENTITLEMENT_GATE_SHUTDOWN_GRACE')}")
    for probe in ("startupProbe", "readinessProbe"):
        command = meter.get(probe, {}).get("exec", {}).get("command", [])
        check(command[:2] == ["/entitlement-gate", "health"] and f"http://{listen}/readyz" in command,
              f"{label}: {probe} must exec `entitlement-gate health` on {listen}/readyz: {meter.get(probe)}")
        check("httpGet" not in meter.get(probe, {}), f"{label}: {probe} httpGet cannot reach loopback")
    volume = {v["name"]: v for v in spec.get("volumes", [])}.get("entitlement-gate-meter-state", {})
    if "emptyDir" in volume:
        # The sidecar refuses reports at its budget, so the kubelet never evicts the pod for it.
        budget, limit = env.get("ENTITLEMENT_GATE_METER_STATE_BUDGET"), volume["emptyDir"].get("sizeLimit")
        check(budget and limit and size_bytes(limit) == 2 * size_bytes(budget),
              f"{label}: the state emptyDir's sizeLimit {limit} must be twice the meter's budget {budget}")
    check_restricted(f"{label} meter", meter)
    app_env = env_of(app_of(spec))
    check(app_env.get("ENTITLEMENT_GATE_METER_URL") == f"http://{listen}", f"{label}: app meter URL {app_env.get('ENTITLEMENT_GATE_METER_URL')}")
    return meter


def LICENSE_SETS(base):
    return [*base, "entitlementGate.license.enabled=true", "entitlementGate.license.productId=prod-abc",
            "entitlementGate.license.entitlements={Seats=1:Count}"]


def check_license(base):
    """Contract pricing: `license check` as the gate, `license watch` as a sidecar (native from
    1.29), the app's license URL; outside AWS the buyer's secret, never a web identity token."""
    contract = LICENSE_SETS([s for s in base if not s.startswith("entitlementGate.productCode=")])
    for kube in KUBERNETES_VERSIONS + ["1.28.0"]:
        spec = pod_spec(render(*contract, kube=kube, versions=[kube] if kube != "1.28.0" else ["1.29.0"]))
        label = f"license {kube}"
        inits = spec.get("initContainers", [])
        gate = inits[0] if inits else {}
        check(gate.get("name") == GATE and gate.get("args") == ["license", "check"], f"{label}: the first init container must be `license check`: {gate.get('args')}")
        check_restricted(f"{label} gate", gate)
        env = env_of(gate)
        check(env.get("ENTITLEMENT_GATE_PRODUCT_ID") == "prod-abc" and env.get("ENTITLEMENT_GATE_ENTITLEMENTS") == "Seats=1:Count"
              and env.get("ENTITLEMENT_GATE_CHECKOUT_TYPE") == "provisional", f"{label}: gate license env {env}")
        check(not {"ENTITLEMENT_GATE_PRODUCT_CODE", "ENTITLEMENT_GATE_PUBLIC_KEY_FILE", "ENTITLEMENT_GATE_PUBLIC_KEY_VERSION"} & set(env),
              f"{label}: a contract-only gate needs no product code or key: {sorted(env)}")
        check(env.get("ENTITLEMENT_GATE_HANDOFF_DIR") == HANDOFF_PATH and HANDOFF_PATH in mounts(gate), f"{label}: gate handoff")
        check(env.get("ENTITLEMENT_GATE_WORKLOAD_ID") == WORKLOAD_ID, f"{label}: gate workload id (the default NodeId)")
        native = kube != "1.28.0"
        watch = container(spec, LICENSE, "initContainers" if native else "containers")
        if not check(watch is not None, f"{label}: no {LICENSE} ({'native' if native else 'regular'})"):
            continue
        check(watch.get("args") == ["license", "watch"], f"{label}: watch args {watch.get('args')}")
        check((watch.get("restartPolicy") == "Always") == native, f"{label}: watch restartPolicy {watch.get('restartPolicy')}")
        check_restricted(f"{label} watch", watch)
        wenv = env_of(watch)
        check(wenv.get("ENTITLEMENT_GATE_LICENSE_LISTEN") == "127.0.0.1:8479" and wenv.get("ENTITLEMENT_GATE_SHUTDOWN_GRACE") == "10s"
              and wenv.get("ENTITLEMENT_GATE_ON_LOSS") == "exit" and wenv.get("ENTITLEMENT_GATE_LOSS_GRACE") == "30m"
              and wenv.get("ENTITLEMENT_GATE_PRODUCT_ID") == "prod-abc", f"{label}: watch env {wenv}")
        check(mounts(watch).get(HANDOFF_PATH, {}).get("readOnly") is not True, f"{label}: the watch rewrites license.json")
        for probe in ("startupProbe", "readinessProbe"):
            command = watch.get(probe, {}).get("exec", {}).get("command", [])
            check(command[:2] == ["/entitlement-gate", "health"] and "http://127.0.0.1:8479/readyz" in command, f"{label}: watch {probe} {command}")
        app_env = env_of(app_of(spec))
        check(app_env.get("ENTITLEMENT_GATE_LICENSE_URL") == "http://127.0.0.1:8479/v1/license", f"{label}: app license URL {app_env}")
        check(mounts(app_of(spec)).get(HANDOFF_PATH, {}).get("readOnly") is True, f"{label}: the app reads license.json read-only")
        for who, c in (("gate", gate), ("watch", watch)):
            check(all(env_of(c).get(name) == value for name, value in MESH_ENV.items()), f"{label}: {who} mesh annotations env")
            check(not any(n.startswith("AWS_") for n in env_of(c)), f"{label}: {who} has AWS_ variables without Anywhere")

    spec = pod_spec(render(*contract, "entitlementGate.license.anywhere.enabled=true", "entitlementGate.license.watch.onLoss=report",
                           "entitlementGate.license.checkoutType=perpetual", versions=["1.37.0"]))
    token = f"{PRODUCT_LICENSE}/license_token"
    for name in (GATE, LICENSE):
        c = container(spec, name) or {}
        env = env_of(c)
        check(env.get("AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE") == token, f"anywhere {name}: token file {env.get('AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE')}")
        check(env.get("AWS_ROLE_ARN") == {"secretKeyRef": {"name": "awsmp-license-access-config", "key": "iam_role"}}, f"anywhere {name}: role {env.get('AWS_ROLE_ARN')}")
        check("AWS_WEB_IDENTITY_TOKEN_FILE" not in env, f"anywhere {name}: AWS_WEB_IDENTITY_TOKEN_FILE would hand the license token to STS")
        check("ENTITLEMENT_GATE_REGION" not in env, f"anywhere {name}: no Region by default")
        check(mounts(c).get(PRODUCT_LICENSE, {}).get("readOnly") is True, f"anywhere {name}: the secret mount must be read-only")
        check(env.get("ENTITLEMENT_GATE_CHECKOUT_TYPE") == "perpetual", f"anywhere {name}: checkout type")
    check(env_of(container(spec, LICENSE) or {}).get("ENTITLEMENT_GATE_ON_LOSS") == "report", "anywhere: onLoss report")
    check("AWS_ROLE_ARN" not in env_of(app_of(spec)) and PRODUCT_LICENSE not in mounts(app_of(spec)), "anywhere: the app gets the buyer's secret")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    check(volumes.get("entitlement-gate-product-license", {}).get("secret", {}).get("secretName") == "awsmp-license-access-config", f"anywhere secret volume {volumes}")
    spec = pod_spec(render(*contract, "entitlementGate.license.anywhere.enabled=true", "entitlementGate.license.anywhere.secretName=my-license",
                           "entitlementGate.license.watch.enabled=false", versions=["1.37.0"]))
    check(container(spec, LICENSE) is None and container(spec, LICENSE, "containers") is None, "license watch disabled: no sidecar")
    check(env_of(container(spec, GATE) or {}).get("AWS_ROLE_ARN", {}).get("secretKeyRef", {}).get("name") == "my-license", "anywhere secret name")
    # Contract pricing with custom dimensions: the meter beside the watch, with the product code.
    spec = pod_spec(render(*LICENSE_SETS(base), "entitlementGate.metering.enabled=true", "entitlementGate.metering.dimensions={requests}",
                           versions=["1.37.0"]))
    check([c["name"] for c in spec["initContainers"]] == [GATE, METER, LICENSE], f"license and metering: {[c['name'] for c in spec['initContainers']]}")
    check(env_of(container(spec, METER) or {}).get("ENTITLEMENT_GATE_PRODUCT_CODE") == "abc", "license and metering: the meter's product code")


def check_labels(label, metadata, selector=None):
    labels = metadata.get("labels", {})
    missing = [k for k in RECOMMENDED if k not in labels]
    check(not missing, f"{label}: recommended labels missing {missing}")
    if selector is not None:
        check(set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"},
              f"{label}: the selector must hold only name and instance (immutable): {selector}")
        check(all(labels.get(k) == v for k, v in selector.items()), f"{label}: pod labels must match the selector")


def check_helm_chart():
    # charts/entitlement-gate is a committed symlink to the library: lint works in a fresh clone.
    link = CHART / "charts" / "entitlement-gate"
    check(link.is_symlink() and link.resolve() == LIBRARY, f"{link} must be a symlink to {LIBRARY}")
    for chart in (LIBRARY, CHART):
        result = helm("lint", "--strict", str(chart), expect_ok=False)
        check(result.returncode == 0, f"helm lint --strict {chart.name}:\n{result.stdout}{result.stderr}")
    synced = run(sys.executable, str(ROOT / "scripts" / "sync-helm-schema.py"), "--check", str(CHART / "values.schema.json"), expect_ok=False)
    check(synced.returncode == 0, f"example schema: {synced.stderr}")
    shown = yaml.safe_load(helm("show", "values", str(LIBRARY)).stdout)
    check({"image", "extraEnv", "securityContext", "mesh", "metering"} <= set(shown), f"helm show values of the library lacks defaults: {sorted(shown)}")

    # Gate off: nothing of the gate, the recommended labels everywhere.
    objects = render()
    spec = pod_spec(objects)
    check("initContainers" not in spec and "volumes" not in spec, "gate off: gate containers or volumes rendered")
    check(all("env" not in c for c in spec["containers"]) and len(spec["containers"]) == 1, "gate off: app env or sidecars rendered")
    deployment = one(objects, "Deployment")
    check_labels("helm Deployment", deployment["metadata"])
    check_labels("helm pod template", deployment["spec"]["template"]["metadata"], deployment["spec"]["selector"]["matchLabels"])
    account = objects.get(("ServiceAccount", "demo-example"), {})
    check_labels("helm ServiceAccount", account.get("metadata", {}))
    check("helm.sh/chart" in deployment["metadata"]["labels"], "helm: helm.sh/chart label")
    check("annotations" not in account.get("metadata", {}), "gate off, no roleArn: unexpected annotations")

    base = ["entitlementGate.enabled=true", "entitlementGate.productCode=abc",
            "entitlementGate.image.registry=registry.example.com", "entitlementGate.image.repository=gate"]
    key = [f"string:entitlementGate.publicKey={PEM}"]

    # Gate on, open image: the key as a ConfigMap mounted into gate and app.
    role = "arn:aws:iam::111122223333:role/register-usage"
    objects = render(*base, *key, f"serviceAccount.roleArn={role}")
    spec = pod_spec(objects)
    gate = check_gate("helm, gate on", spec, "abc")
    if gate:
        env = env_of(gate)
        check(env["ENTITLEMENT_GATE_PUBLIC_KEY_VERSION"] == "1" and env.get("ENTITLEMENT_GATE_DEADLINE") == "120s", f"defaults {env}")
        check(gate["image"] == "registry.example.com/gate:0.1.0", f"default image {gate['image']}")
        check(gate["securityContext"].get("runAsUser") == 65532, "default UID 65532")
        check("HTTPS_PROXY" not in env and "SSL_CERT_FILE" not in env, "no proxy or CA env by default")
    app_env = env_of(app_of(spec))
    check(app_env.get("ENTITLEMENT_GATE_PUBLIC_KEY_FILE") == KEY_FILE, "app key file env")
    check(mounts(app_of(spec)).get(KEY_FILE.rsplit("/", 1)[0], {}).get("readOnly") is True, "app key mount read-only")
    configmap = objects.get(("ConfigMap", "demo-entitlement-gate-key"), {})
    check(configmap.get("data", {}).get("public-key.pem", "").strip() == PEM, f"key ConfigMap {configmap}")
    check_labels("helm key ConfigMap", configmap.get("metadata", {}))
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    check(volumes.get("entitlement-gate-public-key", {}).get("configMap", {}).get("name") == "demo-entitlement-gate-key", "key volume")
    check(objects[("ServiceAccount", "demo-example")]["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn") == role, "IRSA annotation")
    check("annotations" not in one(objects, "Deployment")["spec"]["template"]["metadata"], "no mesh: no pod annotations")
    check(len(spec["containers"]) == 1 and len(spec["initContainers"]) == 1, "no metering: no sidecar")

    # Image: the digest wins over the tag; global.imageRegistry wins over registry (gate and app).
    spec = pod_spec(render(*base, *key, f"entitlementGate.image.digest={DIGEST}", "entitlementGate.image.tag=9.9.9"))
    check(spec["initContainers"][0]["image"] == f"registry.example.com/gate@{DIGEST}", f"digest: {spec['initContainers'][0]['image']}")
    spec = pod_spec(render(*base, *key, "global.imageRegistry=mirror.example.com"))
    check(spec["initContainers"][0]["image"] == "mirror.example.com/gate:0.1.0", f"global registry: {spec['initContainers'][0]['image']}")
    check(app_of(spec).get("image", "").startswith("mirror.example.com/"), f"global registry for the app: {app_of(spec).get('image')}")

    # Locked image: no run-time key for the gate; a key given anyway reaches only the app.
    spec = pod_spec(render(*base, "entitlementGate.lockedImage=true"))
    check_gate("helm, locked", spec, "abc", key=False)
    check("ENTITLEMENT_GATE_PUBLIC_KEY_FILE" not in env_of(app_of(spec)), "locked without key: app key env")
    spec = pod_spec(render(*base, *key, "entitlementGate.lockedImage=true", "entitlementGate.handoff.enabled=false",
                           "entitlementGate.publicKeyVersion=2", "entitlementGate.deadline=90s"))
    gate = check_gate("helm, locked with app key", spec, "abc", handoff=False, key=False)
    check(env_of(app_of(spec)).get("ENTITLEMENT_GATE_PUBLIC_KEY_FILE") == KEY_FILE, "locked with key: the app still gets it")
    if gate:
        check(env_of(gate)["ENTITLEMENT_GATE_PUBLIC_KEY_VERSION"] == "2" and env_of(gate)["ENTITLEMENT_GATE_DEADLINE"] == "90s", "key version and deadline")

    # An existing ConfigMap for the key: no ConfigMap of the chart's own.
    objects = render(*base, "entitlementGate.existingPublicKeyConfigMap.name=vendor-key", "entitlementGate.existingPublicKeyConfigMap.key=k.pem")
    volumes = {v["name"]: v for v in pod_spec(objects).get("volumes", [])}
    check(volumes.get("entitlement-gate-public-key", {}).get("configMap") == {"name": "vendor-key", "items": [{"key": "k.pem", "path": "public-key.pem"}]}, f"existing key ConfigMap {volumes}")
    check(not any(k == "ConfigMap" for k, _ in objects), "existing key ConfigMap: the chart rendered its own")

    # Proxy, CA bundle and extraEnv on every gate container, not on the app; securityContext merge;
    # pod labels and annotations pass through.
    proxy = "http://proxy.example.internal:3128"
    sets = [*base, *key, "entitlementGate.metering.enabled=true", "entitlementGate.metering.dimensions={requests}",
            "entitlementGate.extraEnv[0].name=HTTPS_PROXY", f"entitlementGate.extraEnv[0].value={proxy}",
            "entitlementGate.extraEnv[1].name=NO_PROXY", "string:entitlementGate.extraEnv[1].value=169.254.169.254\\,169.254.170.2",
            "entitlementGate.caBundle.existingConfigMap=corporate-ca",
            "entitlementGate.securityContext.runAsUser=1000", "entitlementGate.podLabels.team=billing",
            "string:entitlementGate.podAnnotations.example\\.com/gated=true", "podLabels.tier=web", "podAnnotations.owner=platform"]
    objects = render(*sets)
    spec = pod_spec(objects)
    for name in (GATE, METER):
        c = container(spec, name) or {}
        env = env_of(c)
        check(env.get("HTTPS_PROXY") == proxy and env.get("NO_PROXY") == "169.254.169.254,169.254.170.2", f"{name}: extraEnv {env}")
        ca = "/etc/entitlement-gate/ca/ca-bundle.pem"
        check(env.get("SSL_CERT_FILE") == ca and env.get("AWS_CA_BUNDLE") == ca, f"{name}: CA bundle env")
        check(mounts(c).get("/etc/entitlement-gate/ca", {}).get("readOnly") is True, f"{name}: CA mount")
        security = c.get("securityContext", {})
        check(security.get("runAsUser") == 1000 and security.get("readOnlyRootFilesystem") is True
              and security.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: securityContext not merged over the defaults: {security}")
    check("HTTPS_PROXY" not in env_of(app_of(spec)), "extraEnv must not reach the app")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    check(volumes.get("entitlement-gate-ca", {}).get("configMap", {}).get("name") == "corporate-ca", "CA volume")
    template = one(objects, "Deployment")["spec"]["template"]["metadata"]
    check(template["labels"].get("team") == "billing" and template["labels"].get("tier") == "web", f"pod labels {template['labels']}")
    check(template.get("annotations") == {"example.com/gated": "true", "owner": "platform"}, f"pod annotations {template.get('annotations')}")

    # Service meshes.
    meshes = {
        ("istio", "proxyUid"): ({}, 1337), ("linkerd", "proxyUid"): ({}, 2102),
        ("istio", "excludePorts"): ({"traffic.sidecar.istio.io/excludeOutboundPorts": "443"}, 65532),
        ("linkerd", "excludePorts"): ({"config.linkerd.io/skip-outbound-ports": "443"}, 65532),
        ("istio", "nativeSidecar"): ({"sidecar.istio.io/nativeSidecar": "true"}, 65532),
        ("linkerd", "nativeSidecar"): ({"config.beta.linkerd.io/proxy-enable-native-sidecar": "true"}, 65532),
    }
    metering = ["entitlementGate.metering.enabled=true", "entitlementGate.metering.dimensions={requests}"]
    for (mesh, strategy), (annotations, uid) in meshes.items():
        objects = render(*base, *key, *metering, f"entitlementGate.mesh.type={mesh}", f"entitlementGate.mesh.strategy={strategy}",
                         versions=["1.37.0"])
        spec = pod_spec(objects)
        label = f"mesh {mesh} {strategy}"
        got = one(objects, "Deployment")["spec"]["template"]["metadata"].get("annotations", {})
        check(got == annotations, f"{label}: annotations {got}")
        for name in (GATE, METER):
            check((container(spec, name) or {}).get("securityContext", {}).get("runAsUser") == uid, f"{label}: {name} UID")
        check("runAsUser" not in app_of(spec).get("securityContext", {}), f"{label}: the app's UID must not change")
    spec = pod_spec(render(*base, *key, "entitlementGate.mesh.type=istio", "entitlementGate.mesh.proxyUid=1000650000", versions=["1.37.0"]))
    check(spec["initContainers"][0]["securityContext"]["runAsUser"] == 1000650000, "mesh proxyUid override")
    objects = render(*base, *key, "entitlementGate.mesh.type=linkerd", "entitlementGate.mesh.strategy=excludePorts",
                     "entitlementGate.mesh.excludeOutboundPorts=3128", versions=["1.37.0"])
    check(one(objects, "Deployment")["spec"]["template"]["metadata"].get("annotations") == {"config.linkerd.io/skip-outbound-ports": "3128"}, "mesh exclude port override")

    # The metering sidecar: native from 1.29, a container on 1.28, forced either way; state.
    for kube in KUBERNETES_VERSIONS:
        spec = pod_spec(render(*base, *key, "entitlementGate.metering.enabled=true", "entitlementGate.metering.dimensions={requests,gigabytes}",
                               kube=kube, versions=[kube]))
        meter = check_meter(f"metering {kube}", spec, True, "requests,gigabytes")
        if meter:
            env = env_of(meter)
            check(env.get("ENTITLEMENT_GATE_SEND_ZERO") == "true" and env.get("ENTITLEMENT_GATE_SHUTDOWN_GRACE") == "25s", f"meter defaults {env}")
            # Only a regular container, stopped together with the app, drains.
            native = any(c["name"] == METER for c in spec["initContainers"])
            check(env.get("ENTITLEMENT_GATE_METER_DRAIN") == ("0s" if native else "3s"), f"meter drain {kube} {env}")
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            check("emptyDir" in volumes.get("entitlement-gate-meter-state", {}), "meter state emptyDir by default")
            # The sidecar refuses reports at its budget, well before the kubelet's limit.
            check(env.get("ENTITLEMENT_GATE_METER_STATE_BUDGET") == "256Mi"
                  and volumes["entitlement-gate-meter-state"]["emptyDir"].get("sizeLimit") == "512Mi",
                  f"meter state budget and emptyDir limit {env} {volumes.get('entitlement-gate-meter-state')}")
            check(env.get("ENTITLEMENT_GATE_FINAL_FRACTION") == "down" and env.get("ENTITLEMENT_GATE_METER_ID_WINDOW") == "1h",
                  f"meter fraction and id window defaults {env}")
    spec = pod_spec(render(*base, *key, *metering, kube="1.28.0", versions=["1.28.0"]))
    check_meter("metering 1.28", spec, False, "requests")
    check([c["name"] for c in spec["initContainers"]] == [GATE], "metering 1.28: only the gate is an init container")
    spec = pod_spec(render(*base, *key, *metering, "entitlementGate.metering.nativeSidecar=false", versions=["1.37.0"]))
    check_meter("metering forced regular", spec, False, "requests")
    spec = pod_spec(render(*base, *key, *metering, "entitlementGate.metering.state.existingClaim=meter-state",
                           "entitlementGate.metering.sendZero=false", "entitlementGate.metering.port=9000",
                           "entitlementGate.metering.finalFraction=up", "entitlementGate.metering.state.budgetMi=64",
                           "entitlementGate.metering.shutdownGraceSeconds=50", "terminationGracePeriodSeconds=60", versions=["1.37.0"]))
    meter = check_meter("metering customised", spec, True, "requests")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    check(volumes.get("entitlement-gate-meter-state", {}).get("persistentVolumeClaim") == {"claimName": "meter-state"}, f"meter PVC {volumes}")
    if meter:
        env = env_of(meter)
        check(env["ENTITLEMENT_GATE_SEND_ZERO"] == "false" and env["ENTITLEMENT_GATE_METER_LISTEN"] == "127.0.0.1:9000"
              and env["ENTITLEMENT_GATE_SHUTDOWN_GRACE"] == "50s" and env["ENTITLEMENT_GATE_FINAL_FRACTION"] == "up"
              and env["ENTITLEMENT_GATE_METER_STATE_BUDGET"] == "64Mi", f"meter customised env {env}")
    check(spec.get("terminationGracePeriodSeconds") == 60, "terminationGracePeriodSeconds")

    check_license(base)

    # What must be refused, by the schema or the templates.
    refusals = {
        "enabled without productCode": ["entitlementGate.enabled=true"],
        "enabled with empty productCode": [*base[:1], "entitlementGate.productCode=", *base[2:], *key],
        "unknown gate key": [*base, *key, "entitlementGate.prodcutCode=x"],
        "unknown top-level key": ["entitlementgate.enabled=true"],
        "invalid product code": [*base, *key, "entitlementGate.productCode=a b"],
        "key version 0": ["entitlementGate.publicKeyVersion=0"],
        "public key not PEM": ["entitlementGate.publicKey=secret"],
        "role ARN not an ARN": ["serviceAccount.roleArn=my-role"],
        "open image without a key": base,
        "no gate image repository": [*base[:2], *key],
        "image digest not sha256": [*base, *key, "entitlementGate.image.digest=latest"],
        "metering without dimensions": [*base, *key, "entitlementGate.metering.enabled=true"],
        "25 dimensions": [*base, *key, "entitlementGate.metering.enabled=true",
                          "entitlementGate.metering.dimensions={" + ",".join(f"d{i}" for i in range(25)) + "}"],
        "unknown mesh": [*base, *key, "entitlementGate.mesh.type=consul"],
        "meter grace not below the pod's": [*base, *key, *metering, "entitlementGate.metering.shutdownGraceSeconds=30"],
        "regular meter drain plus grace not below the pod's": [*base, *key, *metering, "entitlementGate.metering.nativeSidecar=false",
                                                                "entitlementGate.metering.shutdownGraceSeconds=28"],
        "unknown metering key": [*base, *key, "entitlementGate.metering.dimension={a}"],
        "a final fraction neither down nor up": [*base, *key, *metering, "entitlementGate.metering.finalFraction=nearest"],
        "a state budget of 0": [*base, *key, *metering, "entitlementGate.metering.state.budgetMi=0"],
        "license without productId": [*base, "entitlementGate.license.enabled=true", "entitlementGate.license.entitlements={Seats}"],
        "license without entitlements": [*base, "entitlementGate.license.enabled=true", "entitlementGate.license.productId=prod-abc"],
        "license watch grace not below the pod's": [*LICENSE_SETS(base), "entitlementGate.license.watch.shutdownGraceSeconds=30"],
        "license without the handoff": [*LICENSE_SETS(base), "entitlementGate.handoff.enabled=false"],
        "unknown license key": [*LICENSE_SETS(base), "entitlementGate.license.productID=x"],
        "license onLoss other than exit or report": [*LICENSE_SETS(base), "entitlementGate.license.watch.onLoss=ignore"],
        "metering without productCode in license mode": [*LICENSE_SETS(base[:1] + base[2:]), *metering],
    }
    for label, sets in refusals.items():
        check(refused(*sets)[0], f"accepted: {label}")
    check(refused(*base, *key, "entitlementGate.mesh.type=istio", "entitlementGate.mesh.strategy=nativeSidecar", kube="1.28.0")[0],
          "accepted: a mesh native sidecar on 1.28")
    for sets, word in (([*base[:2], *key], "image.repository"), (["entitlementGate.enabled=true"], "productCode"),
                       ([*base, *key, *metering, "entitlementGate.metering.shutdownGraceSeconds=30"], "terminationGracePeriodSeconds")):
        message = refused(*sets)[1]
        check(word in message, f"the refusal does not name {word}: {message}")

    notes = helm("install", "demo", str(CHART), "--dry-run=client", *[a for s in base + key + metering
                 for a in ("--set-string" if s.startswith("string:") else "--set", s.removeprefix("string:"))]).stdout
    for needle in ("kubectl describe pod", "aws-marketplace:RegisterUsage", "AWSMarketplaceMeteringRegisterUsage",
                   "3 not entitled", "aws-marketplace:MeterUsage", "does NOT grant", "AWSMarketplaceMeteringFullAccess", "mesh"):
        check(needle in notes, f"NOTES.txt lacks {needle!r}")

    # Packaged for an OCI registry: the metadata the publisher adds, and the example still lints
    # against the packaged library.
    with tempfile.TemporaryDirectory() as out:
        run("bash", str(ROOT / "scripts" / "package-charts.sh"), "--out", out, "--home", "https://example.com/entitlement-gate",
            "--source", "https://example.com/entitlement-gate.git", "--icon", "https://example.com/icon.svg", HELM)
        for name in ("entitlement-gate", "example"):
            packages = list(pathlib.Path(out).glob(f"{name}-*.tgz"))
            if not check(len(packages) == 1, f"package-charts.sh: {name} package {packages}"):
                continue
            shown = yaml.safe_load(helm("show", "chart", str(packages[0])).stdout)
            for field in ("home", "sources", "icon", "maintainers", "kubeVersion"):
                check(shown.get(field), f"packaged {name}: no {field}")
            check({"artifacthub.io/license", "artifacthub.io/links"} <= set(shown.get("annotations", {})), f"packaged {name}: Artifact Hub annotations {shown.get('annotations')}")
            result = helm("lint", "--strict", str(packages[0]), expect_ok=False)
            check(result.returncode == 0, f"helm lint --strict packaged {name}: {result.stdout}{result.stderr}")


def kustomize(path):
    text = run(KUBECTL, "kustomize", str(path)).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    validate(f"kustomize {path}", docs, KUBERNETES_VERSIONS)
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def check_kustomize_overlay(label, objects, meter_uid=None, key=True, metering=True):
    spec = pod_spec(objects)
    deployment = one(objects, "Deployment")
    check_labels(f"{label} Deployment", deployment["metadata"])
    check_labels(f"{label} pod template", deployment["spec"]["template"]["metadata"], deployment["spec"]["selector"]["matchLabels"])
    check_labels(f"{label} ServiceAccount", one(objects, "ServiceAccount")["metadata"])
    check("eks.amazonaws.com/role-arn" in one(objects, "ServiceAccount")["metadata"].get("annotations", {}), f"{label}: IRSA annotation")
    check_gate(label, spec, None, key=key)
    configmaps = {name for kind, name in objects if kind == "ConfigMap"}
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        check("/" in c["image"] and "." in c["image"].split("/")[0], f"{label}: {c['name']} image {c['image']} names no registry")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                check(ref["name"] in configmaps, f"{label}: {c['name']} reads a ConfigMap that is not generated: {ref['name']}")
    for v in spec.get("volumes", []):
        if "configMap" in v:
            check(v["configMap"]["name"] in configmaps, f"{label}: volume {v['name']} ConfigMap not generated")
    if metering:
        check_meter(label, spec, True, None)
    else:
        check(container(spec, METER) is None, f"{label}: unexpected meter")
    if meter_uid:
        for name in (GATE,) + ((METER,) if metering else ()):
            check((container(spec, name) or {}).get("securityContext", {}).get("runAsUser") == meter_uid, f"{label}: {name} UID {meter_uid}")
        check("runAsUser" not in app_of(spec).get("securityContext", {}), f"{label}: app UID changed")


def check_plain_manifests():
    base = ROOT / "deploy" / "kubernetes"
    check(not (base / "entitlement-gate.yaml").exists(), "deploy/kubernetes: the REPLACE-... manifest is gone")
    check_kustomize_overlay("kustomize example", kustomize(base / "overlays" / "example"), meter_uid=1337)
    check_kustomize_overlay("kustomize locked", kustomize(base / "overlays" / "locked"), key=False, metering=False)
    # Every component builds in another combination: Linkerd with metering, open image.
    with tempfile.TemporaryDirectory() as tmp:
        overlay = pathlib.Path(tmp)
        example = yaml.safe_load((base / "overlays" / "example" / "kustomization.yaml").read_text())
        # kustomize takes only relative paths; directories outside the overlay are allowed.
        relative = lambda path: os.path.relpath(path, overlay)
        example["resources"] = [relative(base / "base")]
        example["components"] = [relative(base / "components" / c) for c in ("open-image", "metering", "mesh-linkerd", "mesh-linkerd-meter")]
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(example))
        (overlay / "public-key.pem").write_text(PEM + "\n")
        check_kustomize_overlay("kustomize linkerd", kustomize(overlay), meter_uid=2102)
    check_kustomize_license("kustomize contract (Anywhere)", kustomize(base / "overlays" / "contract"), anywhere=True)
    with tempfile.TemporaryDirectory() as tmp:
        overlay = pathlib.Path(tmp)
        contract = yaml.safe_load((base / "overlays" / "contract" / "kustomization.yaml").read_text())
        relative = lambda path: os.path.relpath(path, overlay)
        contract["resources"] = [relative(base / "base")]
        contract["components"] = [relative(base / "components" / "license")]
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(contract))
        check_kustomize_license("kustomize contract (EKS)", kustomize(overlay), anywhere=False)


def check_kustomize_license(label, objects, anywhere):
    spec = pod_spec(objects)
    configmaps = {name for kind, name in objects if kind == "ConfigMap"}
    inits = spec.get("initContainers", [])
    check([c["name"] for c in inits] == [GATE, LICENSE], f"{label}: init containers {[c['name'] for c in inits]}")
    if len(inits) != 2:
        return
    gate, watch = inits
    check(gate.get("args") == ["license", "check"] and watch.get("args") == ["license", "watch"], f"{label}: args")
    check(watch.get("restartPolicy") == "Always", f"{label}: the watch is a native sidecar")
    for who, c in (("gate", gate), ("watch", watch)):
        check_restricted(f"{label} {who}", c)
        env = env_of(c)
        check({"ENTITLEMENT_GATE_PRODUCT_ID", "ENTITLEMENT_GATE_ENTITLEMENTS"} <= set(env) and "ENTITLEMENT_GATE_PRODUCT_CODE" not in env,
              f"{label}: {who} license env {sorted(env)}")
        check(env.get("ENTITLEMENT_GATE_HANDOFF_DIR") == HANDOFF_PATH and HANDOFF_PATH in mounts(c), f"{label}: {who} handoff")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                check(ref["name"] in configmaps, f"{label}: {who} reads a ConfigMap that is not generated: {ref['name']}")
        check("AWS_WEB_IDENTITY_TOKEN_FILE" not in env, f"{label}: {who} AWS_WEB_IDENTITY_TOKEN_FILE")
        check(("AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE" in env) == anywhere and ("AWS_ROLE_ARN" in env) == anywhere, f"{label}: {who} Anywhere env")
        check((mounts(c).get(PRODUCT_LICENSE, {}).get("readOnly") is True) == anywhere, f"{label}: {who} secret mount")
    for probe in ("startupProbe", "readinessProbe"):
        command = watch.get(probe, {}).get("exec", {}).get("command", [])
        check(command[:2] == ["/entitlement-gate", "health"] and "http://127.0.0.1:8479/readyz" in command, f"{label}: watch {probe}")
    app = app_of(spec)
    app_env = env_of(app)
    check(app_env.get("ENTITLEMENT_GATE_LICENSE_URL") == "http://127.0.0.1:8479/v1/license", f"{label}: app license URL")
    check("ENTITLEMENT_GATE_PRODUCT_CODE" not in app_env, f"{label}: the app reads no product code")
    check(mounts(app).get(HANDOFF_PATH, {}).get("readOnly") is True, f"{label}: app license.json read-only")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    check(("entitlement-gate-product-license" in volumes) == anywhere, f"{label}: secret volume")


def fill(text, values):
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    check(placeholders <= set(values), f"unknown placeholders {placeholders - set(values)}")
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


def seconds(duration):
    match = re.fullmatch(r"([0-9]+)s", duration or "")
    return int(match.group(1)) if match else None


def check_ecs_rules(label, containers, k):
    """k maps field names (task-definition JSON camelCase vs CloudFormation PascalCase)."""
    by_name = {c[k("name")]: c for c in containers}
    gate = by_name.get(GATE, {})
    check(gate, f"{label}: no {GATE} container")
    check(gate.get(k("essential")) is False, f"{label}: the gate must be essential: false")
    check(str(gate.get(k("user"), "")).split(":")[0] not in ("", "0", "root"), f"{label}: the gate runs as non-root")
    env = {e[k("name")]: e[k("value")] for e in gate.get(k("environment"), [])}
    licensed = gate.get(k("command")) == ["license", "check"]
    if licensed:
        check({"ENTITLEMENT_GATE_PRODUCT_ID", "ENTITLEMENT_GATE_ENTITLEMENTS"} <= set(env), f"{label}: the gate gets its product ID and entitlements")
    else:
        check(gate.get(k("command")) == ["check"] and "ENTITLEMENT_GATE_PRODUCT_CODE" in env, f"{label}: the gate gets its product code")
    deadline = seconds(str(env.get("ENTITLEMENT_GATE_DEADLINE")))
    start = gate.get(k("startTimeout"))
    check(isinstance(start, int) and start <= 120 and deadline is not None and deadline < start,
          f"{label}: the gate's deadline ({deadline}) must end before its startTimeout ({start}, at most 120 on Fargate)")
    meter = by_name.get(METER)
    watch = by_name.get(LICENSE)
    check(bool(watch) == licensed, f"{label}: a license watch exactly with `license check`")
    apps = [c for c in containers if c[k("name")] not in (GATE, METER, LICENSE)]
    check(apps and all(c.get(k("essential")) is True for c in apps), f"{label}: the app must be essential")
    for app in apps:
        waits = {d[k("containerName")]: d[k("condition")] for d in app.get(k("dependsOn"), [])}
        expected = {GATE: "SUCCESS", **({METER: "HEALTHY"} if meter else {}), **({LICENSE: "HEALTHY"} if watch else {})}
        check(waits == expected, f"{label}: {app[k('name')]} must depend on {expected}, has {waits}")
        app_env = {e[k("name")]: e.get(k("value")) for e in app.get(k("environment"), [])}
        if licensed:
            check(app_env.get("ENTITLEMENT_GATE_LICENSE_URL") == "http://127.0.0.1:8479/v1/license", f"{label}: app license URL")
        else:
            check({"ENTITLEMENT_GATE_PRODUCT_CODE", "ENTITLEMENT_GATE_PUBLIC_KEY_VERSION"} <= set(app_env), f"{label}: app verify env")
        if meter:
            check(app_env.get("ENTITLEMENT_GATE_METER_URL") == "http://127.0.0.1:8478", f"{label}: app meter URL")
    for c in containers:
        for dependency in c.get(k("dependsOn"), []):
            if dependency[k("condition")] in ("SUCCESS", "COMPLETE"):
                check(by_name.get(dependency[k("containerName")], {}).get(k("essential")) is False,
                      f"{label}: {dependency[k('containerName')]} is a {dependency[k('condition')]} target but essential")
        logs = c.get(k("logConfiguration"), {})
        check(logs.get(k("logDriver")) == "awslogs", f"{label}: {c[k('name')]} logs with awslogs")
        check("awslogs-region" in logs.get(k("options"), {}), f"{label}: {c[k('name')]} awslogs-region")
    if meter:
        check(meter.get(k("essential")) is True, f"{label}: the meter must be essential")
        check(meter.get(k("command")) == ["meter"], f"{label}: meter command")
        health = meter.get(k("healthCheck"), {})
        check(health.get(k("command")) == ["CMD", "/entitlement-gate", "health"], f"{label}: meter healthCheck {health}")
        waits = {d[k("containerName")]: d[k("condition")] for d in meter.get(k("dependsOn"), [])}
        check(waits == {GATE: "SUCCESS"}, f"{label}: the meter starts after the gate passed: {waits}")
        menv = {e[k("name")]: e[k("value")] for e in meter.get(k("environment"), [])}
        grace = seconds(menv.get("ENTITLEMENT_GATE_SHUTDOWN_GRACE"))
        stop = meter.get(k("stopTimeout"))
        check(grace is not None and isinstance(stop, int) and grace + 10 <= stop <= 120,
              f"{label}: stopTimeout ({stop}) must leave the final report time after the shutdown grace ({grace}), at most 120")
        check(menv.get("ENTITLEMENT_GATE_DIMENSIONS"), f"{label}: meter dimensions")
        state = menv.get("ENTITLEMENT_GATE_STATE_DIR")
        check(any(m.get(k("containerPath")) == state for m in meter.get(k("mountPoints"), [])), f"{label}: meter state dir {state} not on a volume")
        check(meter.get(k("readonlyRootFilesystem")) is True, f"{label}: meter read-only root")
    if watch:
        check(watch.get(k("essential")) is True and watch.get(k("command")) == ["license", "watch"], f"{label}: the license watch is essential")
        health = watch.get(k("healthCheck"), {})
        check(health.get(k("command")) == ["CMD", "/entitlement-gate", "health", "--url", "http://127.0.0.1:8479/readyz"], f"{label}: watch healthCheck {health}")
        waits = {d[k("containerName")]: d[k("condition")] for d in watch.get(k("dependsOn"), [])}
        check(waits == {GATE: "SUCCESS"}, f"{label}: the watch starts after the gate passed: {waits}")
        wenv = {e[k("name")]: e[k("value")] for e in watch.get(k("environment"), [])}
        grace = seconds(wenv.get("ENTITLEMENT_GATE_SHUTDOWN_GRACE"))
        stop = watch.get(k("stopTimeout"))
        check(grace is not None and isinstance(stop, int) and grace + 10 <= stop <= 120,
              f"{label}: stopTimeout ({stop}) must leave the check-in time after the shutdown grace ({grace}), at most 120")
        # The watch adopts the gate's checkout from license.json: without the shared handoff it
        # would check out a second seat.
        handoff = env.get("ENTITLEMENT_GATE_HANDOFF_DIR")
        for c in (gate, watch, *apps):
            check(handoff and any(m.get(k("containerPath")) == handoff for m in c.get(k("mountPoints"), [])),
                  f"{label}: {c[k('name')]} does not mount the handoff {handoff}")
        check(wenv.get("ENTITLEMENT_GATE_HANDOFF_DIR") == handoff, f"{label}: the watch's handoff dir")
        check(not any(n.startswith("AWS_") for n in wenv), f"{label}: the watch has AWS_ variables on ECS")


def camel(name):
    return name


def pascal(name):
    return name if name.startswith("awslogs") else name[0].upper() + name[1:]


def resolve(node, conditions, parameters):
    """CloudFormation Fn::If resolved for the given condition values, AWS::NoValue dropped, and
    Fn::Sub of a parameter filled with its default (the largest allowed value for a Number)."""
    if isinstance(node, dict):
        if set(node) == {"Fn::If"}:
            name, yes, no = node["Fn::If"]
            return resolve(yes if conditions[name] else no, conditions, parameters)
        if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], str):
            text = node["Fn::Sub"]
            names = re.findall(r"\$\{([A-Za-z0-9]+)\}", text)
            if names and all(n in parameters for n in names):
                for n in names:
                    text = text.replace("${" + n + "}", str(parameters[n]))
                return text
        out = {}
        for key, value in node.items():
            value = resolve(value, conditions, parameters)
            if value != {"Ref": "AWS::NoValue"}:
                out[key] = value
        return out
    if isinstance(node, list):
        return [v for v in (resolve(v, conditions, parameters) for v in node) if v != {"Ref": "AWS::NoValue"}]
    return node


def check_ecs():
    import botocore.session
    from botocore.validate import ParamValidator
    from cfnlint.decode import decode

    shape = botocore.session.get_session().get_service_model("ecs").operation_model("RegisterTaskDefinition").input_shape
    values = {"ACCOUNT_ID": "111122223333", "AWS_REGION": "eu-central-1", "PRODUCT_CODE": "abc123xyz",
              "GATE_IMAGE": "registry.example.com/entitlement-gate:0.1.0", "APP_IMAGE": "registry.example.com/app:1.0.0",
              "DIMENSIONS": "requests,gigabytes", "PRODUCT_ID": "prod-abc123", "ENTITLEMENTS": "Seats=1:Count"}
    for name, metered in (("task-definition.json", False), ("task-definition-metering.json", True), ("task-definition-license.json", False)):
        text = (ROOT / "deploy" / "ecs" / name).read_text()
        check("${AWS_REGION}" in text, f"{name}: the log Region must be the ${{AWS_REGION}} placeholder")
        task = json.loads(fill(text, values))
        report = ParamValidator().validate(task, shape)
        check(not report.has_errors(), f"{name} vs RegisterTaskDefinition: {report.generate_report()}")
        containers = task["containerDefinitions"]
        check_ecs_rules(name, containers, camel)
        check((METER in {c["name"] for c in containers}) == metered, f"{name}: meter present {not metered}")
        check("FARGATE" in task.get("requiresCompatibilities", []) and task.get("networkMode") == "awsvpc",
              f"{name}: Fargate needs FARGATE and awsvpc (awsvpc also gives the app the meter's loopback)")
        check(task.get("taskRoleArn") and task.get("taskRoleArn") != task.get("executionRoleArn"), f"{name}: a task role distinct from the execution role")
        if metered:
            volumes = {v["name"] for v in task.get("volumes", [])}
            meter = next(c for c in containers if c["name"] == METER)
            check({m["sourceVolume"] for m in meter.get("mountPoints", [])} <= volumes, f"{name}: meter volume not declared")

    template, matches = decode(str(ROOT / "deploy" / "ecs" / "cloudformation.yaml"))
    check(not matches, f"cloudformation.yaml does not parse: {matches}")
    check({"ProductCode", "GateImage", "PublicKeyParameter", "Dimensions"} <= set(template["Parameters"]), "cloudformation.yaml: parameters")
    check({"ProductId", "Entitlements"} <= set(template["Parameters"]) and "ProductCodeOrProductId" in template.get("Rules", {}),
          "cloudformation.yaml: contract pricing parameters and the rule that one product identifier is set")
    for metering, key, licensed in itertools.product((False, True), repeat=3):
        label = f"cloudformation.yaml (metering {metering}, SSM key {key}, license {licensed})"
        # The gate's deadline at its largest allowed value must still end before StartTimeout.
        parameters = {n: p.get("MaxValue", p.get("Default")) for n, p in template["Parameters"].items()}
        resources = resolve(template["Resources"], {"UseMetering": metering, "HasPublicKey": key, "UseLicense": licensed}, parameters)
        task = resources["TaskDefinition"]["Properties"]
        containers = task["ContainerDefinitions"]
        check_ecs_rules(label, containers, pascal)
        check((METER in {c["Name"] for c in containers}) == metering, f"{label}: meter presence")
        for c in containers:
            check(c["LogConfiguration"]["Options"]["awslogs-region"] == {"Ref": "AWS::Region"}, f"{label}: log Region is the stack's")
        check(task["TaskRoleArn"] == {"Fn::GetAtt": ["TaskRole", "Arn"]}, f"{label}: TaskRoleArn is TaskRole")
        task_role, execution_role = (json.dumps(resources[r]["Properties"]) for r in ("TaskRole", "ExecutionRole"))
        check(("AWSMarketplaceMeteringRegisterUsage" in task_role) != licensed and "AWSMarketplaceMeteringRegisterUsage" not in execution_role, f"{label}: RegisterUsage on the task role only, without License Manager")
        check(("AWSLicenseManagerConsumptionPolicy" in task_role) == licensed and "LicenseManager" not in execution_role, f"{label}: License Manager on the task role exactly with a ProductId")
        check(("aws-marketplace:MeterUsage" in task_role) == metering and "MeterUsage" not in execution_role, f"{label}: MeterUsage on the task role exactly with metering")
        check(("ssm:GetParameters" in execution_role) == key and "ssm:" not in task_role, f"{label}: the execution role reads the key parameter exactly when given")
        for c in containers:
            if c["Name"] in (GATE, "app") and not licensed:
                secrets = [s["Name"] for s in c.get("Secrets", [])]
                check(secrets == (["ENTITLEMENT_GATE_PUBLIC_KEY"] if key else []), f"{label}: {c['Name']} key secret {secrets}")


def check_iam():
    for name, action in (("register-usage-policy.json", "aws-marketplace:RegisterUsage"), ("meter-usage-policy.json", "aws-marketplace:MeterUsage")):
        statements = json.loads((ROOT / "deploy" / "iam" / name).read_text())["Statement"]
        check([(s["Effect"], s["Action"], s["Resource"]) for s in statements] == [("Allow", action, "*")], f"{name} grants exactly {action}: {statements}")
    statements = json.loads((ROOT / "deploy" / "iam" / "license-manager-policy.json").read_text())["Statement"]
    wanted = {f"license-manager:{a}" for a in ("CheckoutLicense", "ExtendLicenseConsumption", "CheckInLicense", "GetLicense", "ListReceivedLicenses")}
    check(len(statements) == 1 and statements[0]["Effect"] == "Allow" and set(statements[0]["Action"]) == wanted,
          f"license-manager-policy.json grants exactly {sorted(wanted)}: {statements}")
    anywhere = json.loads((ROOT / "deploy" / "iam" / "anywhere-license-role-trust-policy.json").read_text())["Statement"]
    check(len(anywhere) == 1 and anywhere[0]["Principal"] == {"Federated": "openid-license-manager.amazonaws.com"}
          and anywhere[0]["Action"] == "sts:AssumeRoleWithWebIdentity", f"anywhere trust policy principal and action: {anywhere}")
    condition = anywhere[0].get("Condition", {}).get("ForAnyValue:StringLike", {})
    check(condition.get("openid-license-manager.amazonaws.com:amr", "").startswith("aws:license-manager:token-issuer-account-id:"),
          f"anywhere trust policy: only the buyer's own account's tokens (amr condition): {condition}")
    irsa = json.loads((ROOT / "deploy" / "iam" / "irsa-trust-policy.json").read_text())
    check(irsa["Statement"][0]["Action"] == "sts:AssumeRoleWithWebIdentity", "irsa-trust-policy.json action")
    ecs = json.loads((ROOT / "deploy" / "iam" / "ecs-task-role-trust-policy.json").read_text())
    check(ecs["Statement"][0]["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}, "ecs trust principal")


def check_no_region():
    files = [p for d in ("deploy", "helm") for p in (ROOT / d).rglob("*") if p.is_file()] + [ROOT / "Dockerfile"]
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            check(not REGION.search(line), f"{path.relative_to(ROOT)}:{number}: hard-coded Region: {line.strip()}")


def check_dockerfile():
    from dockerfile_parse import DockerfileParser

    instructions = DockerfileParser(path=str(ROOT / "Dockerfile")).structure
    froms = [i["value"] for i in instructions if i["instruction"] == "FROM"]
    check(froms[0].startswith("--platform=$BUILDPLATFORM "), f"Dockerfile: the builder must run on the build platform: FROM {froms[0]}")
    check(froms[-1] == "${BASE_IMAGE}", f"Dockerfile: final stage FROM {froms[-1]}")
    args = {i["value"].split("=", 1)[0]: i["value"].split("=", 1)[-1] for i in instructions if i["instruction"] == "ARG"}
    check(args.get("BASE_IMAGE") == "gcr.io/distroless/static-debian12:nonroot", f"Dockerfile: default base {args.get('BASE_IMAGE')}")
    check({"TARGETARCH", "TRUSTED_PRODUCT_CODES", "TRUSTED_KEYS_DIR"} <= set(args), f"Dockerfile: build args {sorted(args)}")
    runs = [i["value"] for i in instructions if i["instruction"] == "RUN"]
    build = [r for r in runs if "scripts/build-static.sh" in r and "--install-tools" not in r]
    check(len(build) == 1, "Dockerfile: builds with scripts/build-static.sh")
    if build:
        check("--mount=type=cache,target=/usr/local/cargo/registry" in build[0] and "--mount=type=cache,target=/src/target" in build[0],
              "Dockerfile: cache mounts for the Cargo registry and the target directory")
        check("${TARGETARCH}" in build[0], "Dockerfile: builds for TARGETARCH")
    copies = [i["value"] for i in instructions if i["instruction"] == "COPY"]
    check(not any(c.split()[0] == "." for c in copies), "Dockerfile: COPY . copies everything: copy what the build needs")
    final = instructions[max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM"):]
    value = lambda name: [i["value"] for i in final if i["instruction"] == name]
    check(value("USER") == ["65532:65532"], f"Dockerfile: USER {value('USER')}")
    check(value("ENTRYPOINT") == ['["/entitlement-gate"]'], f"Dockerfile: ENTRYPOINT {value('ENTRYPOINT')}")
    check(value("CMD") == ['["check"]'], f"Dockerfile: CMD {value('CMD')}")
    labels = " ".join(value("LABEL"))
    for label in ("title", "description", "version", "licenses", "source"):
        check(f"org.opencontainers.image.{label}=" in labels, f"Dockerfile: OCI label {label}")
    ignore = (ROOT / ".dockerignore").read_text().split()
    check(ignore[ignore.index("*") if "*" in ignore else 0] == "*", ".dockerignore: an allowlist starting with *")


if __name__ == "__main__":
    HELM, KUBECTL = sys.argv[1], sys.argv[2]
    for step in (check_helm_chart, check_plain_manifests, check_ecs, check_iam, check_no_region, check_dockerfile):
        before = len(FAILURES)
        step()
        print(f"{step.__name__}: {'ok' if len(FAILURES) == before else 'FAILED'}")
    for failure in FAILURES:
        print(f"FAIL: {failure}", file=sys.stderr)
    sys.exit(1 if FAILURES else 0)
