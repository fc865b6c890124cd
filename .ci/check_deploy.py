#!/usr/bin/env python3
"""Checks every deploy file with the tools users' pipelines run, plus assertions on what matters.

Usage: check_deploy.py HELM_BINARY

- Helm: the example chart rendered with the gate off and on (and variations), each render
  validated against the Kubernetes JSON schemas (kubernetes-validate, strict), the gate's init
  container checked field by field, and the values schema shown to refuse bad values.
- deploy/kubernetes: the same validation and init-container checks.
- deploy/ecs/task-definition.json: botocore's RegisterTaskDefinition input shape, and the
  essential/dependsOn rule; deploy/ecs/cloudformation.yaml: the same rule and the role split
  (cfn-lint runs separately).
- deploy/iam: the documents parse and grant exactly RegisterUsage.
- Dockerfile: base image, user, entrypoint and the static-build script.
"""

import json
import pathlib
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "example"
# The oldest and newest Kubernetes versions the manifests are validated against.
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
GATE = "entitlement-gate"
HANDOFF_PATH = "/var/run/entitlement-gate"
FAILURES = []


def check(condition, message):
    if not condition:
        FAILURES.append(message)
    return condition


def helm(*args, expect_ok=True):
    result = subprocess.run([HELM, *args], capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        sys.exit(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def render(*sets):
    args = ["template", "demo", str(CHART)]
    for item in sets:
        args += ["--set", item]
    docs = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}, yaml.safe_dump_all(list(docs))


def kubernetes_validate(label, text):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    for version in KUBERNETES_VERSIONS:
        result = subprocess.run(
            ["kubernetes-validate", "--strict", "--quiet", "-k", version, f.name],
            capture_output=True,
            text=True,
        )
        check(result.returncode == 0, f"{label}: kubernetes-validate {version}: {result.stdout}{result.stderr}")


def pod_spec(objects):
    deployments = [o for (kind, _), o in objects.items() if kind == "Deployment"]
    check(len(deployments) == 1, f"expected one Deployment, found {len(deployments)}")
    return deployments[0]["spec"]["template"]["spec"]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def check_gate_container(label, spec, product_code, handoff=True):
    """The init container as the chart and the manifests promise it."""
    inits = spec.get("initContainers", [])
    if not check([c["name"] for c in inits] == [GATE], f"{label}: initContainers {[c['name'] for c in inits]}"):
        return None
    gate = inits[0]
    env = env_of(gate)
    check(gate.get("args") == ["check"], f"{label}: args {gate.get('args')}")
    check(env.get("ENTITLEMENT_GATE_PRODUCT_CODE") == product_code, f"{label}: product code env {env}")
    check("ENTITLEMENT_GATE_PUBLIC_KEY_VERSION" in env, f"{label}: no key version env")
    security = gate.get("securityContext", {})
    check(security.get("runAsNonRoot") is True, f"{label}: runAsNonRoot")
    check(security.get("allowPrivilegeEscalation") is False, f"{label}: allowPrivilegeEscalation")
    check(security.get("readOnlyRootFilesystem") is True, f"{label}: readOnlyRootFilesystem")
    check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: capabilities.drop")
    check(security.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: seccompProfile")
    check(gate.get("terminationMessagePolicy") == "FallbackToLogsOnError", f"{label}: terminationMessagePolicy")
    requests = gate.get("resources", {}).get("requests", {})
    check({"cpu", "memory"} <= set(requests), f"{label}: resource requests {requests}")
    app_mounts = [m for c in spec["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == HANDOFF_PATH]
    if handoff:
        check(env.get("ENTITLEMENT_GATE_HANDOFF_DIR") == HANDOFF_PATH, f"{label}: handoff env {env}")
        check(app_mounts and all(m.get("readOnly") for m in app_mounts), f"{label}: app handoff mount {app_mounts}")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        check(any("emptyDir" in v for v in volumes.values()), f"{label}: handoff emptyDir {volumes}")
    else:
        check("ENTITLEMENT_GATE_HANDOFF_DIR" not in env and not app_mounts, f"{label}: handoff present when disabled")
    return gate


def check_helm_chart():
    # Package the library chart afresh: a stale copy in charts/ would hide template changes.
    helm("dependency", "build", str(CHART))
    for chart in ("entitlement-gate", "example"):
        result = helm("lint", "--strict", str(ROOT / "helm" / chart), expect_ok=False)
        check(result.returncode == 0, f"helm lint --strict {chart}:\n{result.stdout}{result.stderr}")

    objects, text = render()
    kubernetes_validate("helm, gate off", text)
    spec = pod_spec(objects)
    check("initContainers" not in spec, "gate off: an init container was rendered")
    check("volumes" not in spec, "gate off: a handoff volume was rendered")
    check(all("env" not in c for c in spec["containers"]), "gate off: app env was rendered")
    account = objects.get(("ServiceAccount", "demo-example"), {})
    check("annotations" not in account.get("metadata", {}), "gate off, no roleArn: unexpected annotations")

    role = "arn:aws:iam::111122223333:role/register-usage"
    objects, text = render("entitlementGate.enabled=true", "entitlementGate.productCode=abc", f"serviceAccount.roleArn={role}")
    kubernetes_validate("helm, gate on", text)
    gate = check_gate_container("helm, gate on", pod_spec(objects), "abc")
    if gate:
        env = env_of(gate)
        check(env["ENTITLEMENT_GATE_PUBLIC_KEY_VERSION"] == "1", f"default key version {env}")
        check(env.get("ENTITLEMENT_GATE_DEADLINE") == "120s", f"default deadline {env}")
        check("ENTITLEMENT_GATE_PUBLIC_KEY" not in env, "empty publicKey rendered an env var")
        check(gate["image"] == "entitlement-gate:0.1.0", f"default image {gate['image']}")
    annotations = objects[("ServiceAccount", "demo-example")]["metadata"].get("annotations", {})
    check(annotations.get("eks.amazonaws.com/role-arn") == role, f"IRSA annotation {annotations}")

    pem = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"
    objects, text = render(
        "entitlementGate.enabled=true", "entitlementGate.productCode=xyz", "entitlementGate.publicKeyVersion=2",
        "entitlementGate.deadline=90s", "entitlementGate.handoff.enabled=false",
        "entitlementGate.image.repository=registry.example/gate", "entitlementGate.image.tag=1.2.3",
        f"entitlementGate.publicKey={pem}",
    )
    kubernetes_validate("helm, gate on, customised", text)
    gate = check_gate_container("helm, customised", pod_spec(objects), "xyz", handoff=False)
    if gate:
        env = env_of(gate)
        check(env["ENTITLEMENT_GATE_PUBLIC_KEY_VERSION"] == "2", f"key version {env}")
        check(env["ENTITLEMENT_GATE_DEADLINE"] == "90s", f"deadline {env}")
        check(env.get("ENTITLEMENT_GATE_PUBLIC_KEY") == pem, f"public key {env}")
        check(gate["image"] == "registry.example/gate:1.2.3", f"image {gate['image']}")

    refusals = {
        "enabled without productCode": ["entitlementGate.enabled=true"],
        "enabled with empty productCode": ["entitlementGate.enabled=true", "entitlementGate.productCode="],
        "unknown gate key": ["entitlementGate.enabled=true", "entitlementGate.productCode=abc", "entitlementGate.prodcutCode=x"],
        "unknown top-level key": ["entitlementgate.enabled=true"],
        "invalid product code": ["entitlementGate.enabled=true", "entitlementGate.productCode=a b"],
        "key version 0": ["entitlementGate.publicKeyVersion=0"],
        "public key not PEM": ["entitlementGate.publicKey=secret"],
        "role ARN not an ARN": ["serviceAccount.roleArn=my-role"],
    }
    for label, sets in refusals.items():
        args = ["template", "demo", str(CHART)] + [a for s in sets for a in ("--set", s)]
        result = helm(*args, expect_ok=False)
        check(result.returncode != 0, f"schema accepted: {label}")
    missing = helm("template", "demo", str(CHART), "--set", "entitlementGate.enabled=true", expect_ok=False)
    check("productCode" in missing.stderr, f"missing productCode error does not name it: {missing.stderr}")

    notes = helm("install", "demo", str(CHART), "--dry-run=client", "--set", "entitlementGate.enabled=true",
                 "--set", "entitlementGate.productCode=abc").stdout
    for needle in ("kubectl describe pod", "aws-marketplace:RegisterUsage", "AWSMarketplaceMeteringRegisterUsage", "3 not entitled"):
        check(needle in notes, f"NOTES.txt lacks {needle!r}")


def check_plain_manifests():
    path = ROOT / "deploy" / "kubernetes" / "entitlement-gate.yaml"
    text = path.read_text()
    kubernetes_validate(str(path.relative_to(ROOT)), text)
    objects = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}
    check_gate_container("deploy/kubernetes", pod_spec(objects), "REPLACE-WITH-YOUR-PRODUCT-CODE")
    accounts = [o for (kind, _), o in objects.items() if kind == "ServiceAccount"]
    check(len(accounts) == 1 and "eks.amazonaws.com/role-arn" in accounts[0]["metadata"].get("annotations", {}),
          "deploy/kubernetes: ServiceAccount with the IRSA annotation")


def check_ecs_dependency_rule(label, containers, name_key, essential_key, depends_key, condition_key, target_key):
    """The app waits for the gate's SUCCESS; a SUCCESS/COMPLETE target must not be essential."""
    by_name = {c[name_key]: c for c in containers}
    check(GATE in by_name, f"{label}: no {GATE} container")
    check(by_name.get(GATE, {}).get(essential_key) is False, f"{label}: the gate must be essential: false")
    apps = [c for c in containers if c[name_key] != GATE]
    check(apps and all(c.get(essential_key) is True for c in apps), f"{label}: the app must be essential")
    for app in apps:
        waits = {d[target_key]: d[condition_key] for d in app.get(depends_key, [])}
        check(waits.get(GATE) == "SUCCESS", f"{label}: {app[name_key]} must depend on {GATE} SUCCESS, has {waits}")
    for container in containers:
        for dependency in container.get(depends_key, []):
            if dependency[condition_key] in ("SUCCESS", "COMPLETE"):
                target = by_name.get(dependency[target_key], {})
                check(target.get(essential_key) is False, f"{label}: {dependency[target_key]} is a {dependency[condition_key]} target but essential")


def check_ecs():
    import botocore.session
    from botocore.validate import ParamValidator

    path = ROOT / "deploy" / "ecs" / "task-definition.json"
    task = json.loads(path.read_text())
    shape = botocore.session.get_session().get_service_model("ecs").operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(task, shape)
    check(not report.has_errors(), f"task-definition.json vs RegisterTaskDefinition: {report.generate_report()}")
    containers = task["containerDefinitions"]
    check_ecs_dependency_rule("task-definition.json", containers, "name", "essential", "dependsOn", "condition", "containerName")
    check("FARGATE" in task.get("requiresCompatibilities", []) and task.get("networkMode") == "awsvpc",
          "task-definition.json: Fargate needs FARGATE and awsvpc")
    check(task.get("taskRoleArn") and task.get("taskRoleArn") != task.get("executionRoleArn"),
          "task-definition.json: a task role distinct from the execution role")
    check(all(c.get("logConfiguration", {}).get("logDriver") == "awslogs" for c in containers),
          "task-definition.json: every container logs with awslogs")
    gate = next((c for c in containers if c["name"] == GATE), {})
    check(gate.get("user", "").split(":")[0] not in ("", "0", "root"), "task-definition.json: the gate runs as non-root")
    check(any(e["name"] == "ENTITLEMENT_GATE_PRODUCT_CODE" for e in gate.get("environment", [])),
          "task-definition.json: the gate gets its product code")

    from cfnlint.decode import decode

    template, matches = decode(str(ROOT / "deploy" / "ecs" / "cloudformation.yaml"))
    check(not matches, f"cloudformation.yaml does not parse: {matches}")
    resources = template["Resources"]
    task = resources["TaskDefinition"]["Properties"]
    check_ecs_dependency_rule("cloudformation.yaml", task["ContainerDefinitions"], "Name", "Essential", "DependsOn", "Condition", "ContainerName")
    check(task["TaskRoleArn"] == {"Fn::GetAtt": ["TaskRole", "Arn"]}, "cloudformation.yaml: TaskRoleArn is TaskRole")
    check(task["ExecutionRoleArn"] == {"Fn::GetAtt": ["ExecutionRole", "Arn"]}, "cloudformation.yaml: ExecutionRoleArn is ExecutionRole")
    policies = lambda role: json.dumps(resources[role]["Properties"].get("ManagedPolicyArns", []))
    check("AWSMarketplaceMeteringRegisterUsage" in policies("TaskRole"), "cloudformation.yaml: the task role carries RegisterUsage")
    check("AWSMarketplaceMeteringRegisterUsage" not in policies("ExecutionRole"), "cloudformation.yaml: the execution role must not")
    check({"ProductCode", "GateImage"} <= set(template["Parameters"]), "cloudformation.yaml: parameterised by product code and image")


def check_iam():
    policy = json.loads((ROOT / "deploy" / "iam" / "register-usage-policy.json").read_text())
    statements = policy["Statement"]
    check([(s["Effect"], s["Action"], s["Resource"]) for s in statements] == [("Allow", "aws-marketplace:RegisterUsage", "*")],
          f"register-usage-policy.json grants exactly RegisterUsage: {statements}")
    irsa = json.loads((ROOT / "deploy" / "iam" / "irsa-trust-policy.json").read_text())
    check(irsa["Statement"][0]["Action"] == "sts:AssumeRoleWithWebIdentity", "irsa-trust-policy.json action")
    ecs = json.loads((ROOT / "deploy" / "iam" / "ecs-task-role-trust-policy.json").read_text())
    check(ecs["Statement"][0]["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}, "ecs trust principal")


def check_dockerfile():
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    instructions = parser.structure
    froms = [i["value"] for i in instructions if i["instruction"] == "FROM"]
    check(froms[-1] == "${BASE_IMAGE}", f"Dockerfile: final stage FROM {froms[-1]}")
    args = {i["value"].split("=", 1)[0]: i["value"].split("=", 1)[-1] for i in instructions if i["instruction"] == "ARG"}
    check(args.get("BASE_IMAGE") == "gcr.io/distroless/static-debian12:nonroot", f"Dockerfile: default base {args.get('BASE_IMAGE')}")
    check({"TARGETARCH", "TRUSTED_PRODUCT_CODES", "TRUSTED_KEYS_DIR"} <= set(args), f"Dockerfile: build args {sorted(args)}")
    final = instructions[max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM"):]
    value = lambda name: [i["value"] for i in final if i["instruction"] == name]
    check(value("USER") == ["65532:65532"], f"Dockerfile: USER {value('USER')}")
    check(value("ENTRYPOINT") == ['["/entitlement-gate"]'], f"Dockerfile: ENTRYPOINT {value('ENTRYPOINT')}")
    check(value("CMD") == ['["check"]'], f"Dockerfile: CMD {value('CMD')}")
    labels = " ".join(value("LABEL"))
    for label in ("title", "description", "version", "licenses", "source"):
        check(f"org.opencontainers.image.{label}=" in labels, f"Dockerfile: OCI label {label}")
    check(any("scripts/build-static.sh" in i["value"] for i in instructions if i["instruction"] == "RUN"),
          "Dockerfile: builds with scripts/build-static.sh")


if __name__ == "__main__":
    HELM = sys.argv[1]
    for step in (check_helm_chart, check_plain_manifests, check_ecs, check_iam, check_dockerfile):
        before = len(FAILURES)
        step()
        print(f"{step.__name__}: {'ok' if len(FAILURES) == before else 'FAILED'}")
    for failure in FAILURES:
        print(f"FAIL: {failure}", file=sys.stderr)
    sys.exit(1 if FAILURES else 0)
