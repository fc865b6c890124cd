#!/usr/bin/env python3
"""The shipped image and the rendered manifests in a real container runtime (podman kube play).

Run by scripts/runtime-check.sh, which sets the environment below; the README's "Run it for real"
section says what each scenario proves and what it does not.

Usage: runtime_check.py [--only NAME[,NAME...]]

Environment: CONTAINERS_CONF, HELM, KUBECTL, EMULATOR (the metering-emulator binary),
OPEN_BINARY and LOCKED_BINARY (static amd64 builds: open, and locked to ci-locked-product).

Every pod is named with this run's id and removed, with the images this run built, even when a
scenario fails; the emulator, on 127.0.0.1, is the only thing the pods call.
"""

import decimal
import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import traceback
import urllib.parse
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "runtime"
RUN = "rc" + secrets.token_hex(3)
GATE_REPOSITORY = "localhost/entitlement-gate-runtime-check"
APP_REPOSITORY = "localhost/entitlement-gate-runtime-app"
# The product code (and ID) a locked build trusts: .ci/static-check.sh builds its locked binary
# with it, and scripts/runtime-check.sh builds one the same way when that binary is absent.
LOCKED_PRODUCT = "ci-locked-product"
# What the emulator knows.
PAID_HOURLY = "runtime-paid-helm"
UNPAID_HOURLY = "runtime-unpaid-helm"
METERED_HELM = "runtime-metered-helm"
METERED_KUSTOMIZE = "runtime-metered-kustomize"  # tests/runtime/kustomize/example
CONTRACT_HELM = "prod-runtime-helm"
CONTRACT_KUSTOMIZE = "prod-runtime-kustomize"  # tests/runtime/kustomize/contract
LICENSE_TOKEN = "runtime-check-license-token"
BUYER_ROLE = "arn:aws:iam::111122223333:role/runtime-check-license"
REGION = "us-east-1"
# The ports the overlays fix for the sidecars (with the host's network, the host's ports).
OVERLAY_METER_PORT, OVERLAY_WATCH_PORT = 8478, 8479


class Failure(Exception):
    """A property of the scenario did not hold: the message says which."""


def check(condition, message):
    if not condition:
        raise Failure(message)


def run(args, check_rc=True, timeout=180, cwd=None):
    """Runs a command and returns its CompletedProcess (text); a failure or a hang is a Failure."""
    args = [str(a) for a in args]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise Failure(f"`{' '.join(args[:4])} ...` did not end within {timeout} s")
    if check_rc and done.returncode != 0:
        raise Failure(f"`{' '.join(args)}` exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


def podman(*args, **kwargs):
    return run(["podman", *args], **kwargs)


def wait_for(what, condition, timeout=90.0):
    """Polls condition() until it returns a true value, which is returned. The bound is generous:
    it only ends a run that would otherwise hang, it measures nothing."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failure(f"still waiting after {timeout:.0f} s for {what}")
        time.sleep(0.2)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def require_free(port, what):
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise Failure(f"127.0.0.1:{port} is taken on this machine; {what} listens there in a pod on "
                          "the host's network")


def say(message=""):
    print(message, flush=True)


def cargo_version():
    return tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]


# --- the emulator -----------------------------------------------------------------------------

class Emulator:
    """metering-emulator on a free loopback port, knowing every product the scenarios use."""

    def __init__(self, binary, work):
        self.key = work / "emulator-public-key.pem"
        licenses = work / "licenses.json"
        seats = lambda sku, name, count: {"productSku": sku, "entitlements": [
            {"name": name, "unit": "Count", "maxCount": count}]}
        licenses.write_text(json.dumps({"licenses": [
            seats(CONTRACT_HELM, "Seats", 2), seats(CONTRACT_KUSTOMIZE, "ReadOnlyUsers", 1),
            seats(LOCKED_PRODUCT, "ReadOnlyUsers", 1)]}))
        addr = work / "emulator-addr"
        args = [binary, "--listen", "127.0.0.1:0", "--addr-file", addr, "--public-key-out", self.key,
                "--region", REGION, "--licenses", licenses, "--not-entitled", UNPAID_HOURLY,
                "--refresh-token", LICENSE_TOKEN, "--buyer-role", BUYER_ROLE]
        for code in (PAID_HOURLY, METERED_HELM, METERED_KUSTOMIZE, LOCKED_PRODUCT):
            args += ["--entitled", code]
        self.log = open(work / "emulator.log", "w")
        self.process = subprocess.Popen([str(a) for a in args], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for("the emulator's address", lambda: addr.exists() and addr.read_text().strip(), timeout=30)
        self.url = "http://" + addr.read_text().strip()

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return json.load(answer)

    def calls(self, operation):
        return self.get("/_emulator/stats")["operations"][operation]["calls"]

    def ledger(self, product):
        return [r for r in self.get("/_emulator/ledger")["records"] if r.get("productCode") == product]

    def seats(self, product):
        """(units in use, node IDs of the held checkouts) of a license."""
        for license in self.get("/_emulator/licenses")["licenses"]:
            if license["productSku"] == product:
                held = sorted(c["nodeId"] for c in license["checkouts"] if c["state"] == "held")
                return sum(e["inUse"] for e in license["entitlements"]), held
        raise Failure(f"the emulator has no license for {product}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


# --- images -----------------------------------------------------------------------------------

class Images:
    """The images this run builds; all of them are removed at the end, the test-only base too."""

    def __init__(self, work):
        self.work = work
        self.built = []
        self.timings = {}
        self.before = set(podman("images", "-aq", "--no-trunc").stdout.split())

    def build(self, open_binary, locked_binary):
        started = time.monotonic()
        self.base = run([HERE / "test-only-base-image.sh"], timeout=300).stdout.split()[-1]
        self.built.append(self.base)
        self.timings["test-only base"] = time.monotonic() - started
        started = time.monotonic()
        self.gate = self.gate_image(open_binary, f"{GATE_REPOSITORY}:{RUN}")
        self.timings["gate image (open)"] = time.monotonic() - started
        started = time.monotonic()
        self.locked = self.gate_image(locked_binary, f"{GATE_REPOSITORY}:{RUN}-locked")
        self.timings["gate image (locked)"] = time.monotonic() - started
        started = time.monotonic()
        self.app = self.app_image()
        self.timings["test app image"] = time.monotonic() - started

    def gate_image(self, binary, tag):
        """The real Dockerfile on the test-only base, from exactly the context .dockerignore admits
        (.ci/docker_context.py), the static binary fed to its prebuilt stage."""
        context = self.work / ("context-" + tag.rsplit(":", 1)[1])
        run([sys.executable, ROOT / ".ci" / "docker_context.py", context])
        target = context / "target" / "static" / "amd64" / "entitlement-gate"
        target.parent.mkdir(parents=True)
        shutil.copy2(binary, target)
        podman("build", "-q", "--platform", "linux/amd64", "-f", ROOT / "Dockerfile",
               "--build-arg", "BINARY_SOURCE=prebuilt", "--build-arg", f"BASE_IMAGE={self.base}",
               "--build-arg", f"VERSION={cargo_version()}",
               "--build-arg", "SOURCE_URL=https://example.invalid/runtime-check", "-t", tag, context,
               timeout=300)
        self.built.append(tag)
        return tag

    def app_image(self):
        debs, context = self.work / "debs", self.work / "app-context"
        debs.mkdir()
        context.mkdir()
        run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", "busybox-static"], cwd=debs)
        run(["dpkg-deb", "-x", next(debs.glob("busybox-static_*.deb")), debs / "root"])
        shutil.copy2(debs / "root" / "bin" / "busybox", context / "busybox")
        shutil.copy2(HERE / "app" / "app.sh", context / "app.sh")
        tag = f"{APP_REPOSITORY}:{RUN}"
        podman("build", "-q", "-f", HERE / "app" / "Containerfile", "--build-arg", f"GATE_IMAGE={self.gate}",
               "-t", tag, context, timeout=300)
        self.built.append(tag)
        return tag

    def remove(self):
        """The tagged images, then the untagged ones the builds left (their other stages), not
        podman's own pause image."""
        for tag in reversed(self.built):
            podman("rmi", "-f", tag, check_rc=False)
        pause = set(podman("images", "-q", "--no-trunc", "--filter", "reference=localhost/podman-pause").stdout.split())
        for image in set(podman("images", "-aq", "--no-trunc").stdout.split()) - self.before - pause:
            podman("rmi", "-f", image, check_rc=False)


# --- rendering --------------------------------------------------------------------------------

class Renderer:
    def __init__(self, helm, kubectl, work, images, emulator):
        self.helm, self.kubectl, self.work, self.images, self.emulator = helm, kubectl, work, images, emulator

    def helm_template(self, release, values, **sets):
        """helm template of helm/example with tests/runtime/helm/common.yaml and the named values
        files, the run's image tags, the emulator's key, and SETS (dotted keys below
        entitlementGate)."""
        args = [self.helm, "template", release, ROOT / "helm" / "example", "-f", HERE / "helm" / "common.yaml"]
        for name in values:
            args += ["-f", HERE / "helm" / f"{name}.yaml"]
        args += ["--set", f"image.tag={RUN}", "--set", f"entitlementGate.image.tag={RUN}",
                 "--set-file", f"entitlementGate.publicKey={self.emulator.key}"]
        for key, value in sets.items():
            args += ["--set", f"entitlementGate.{key}={value}"]
        return list(yaml.safe_load_all(run(args).stdout))

    def kustomize(self, overlay, pod="", locked=False):
        """kubectl kustomize of tests/runtime/kustomize/OVERLAY, wrapped for this run: the images
        built here (the locked gate image if LOCKED), the emulator's public key, names ending in
        -<run>-OVERLAY[-POD]."""
        suffix = "-".join(filter(None, (RUN, overlay, pod)))
        wrapper = self.work / "kustomize" / suffix
        wrapper.mkdir(parents=True)
        (wrapper / "public-key.pem").write_text(self.emulator.key.read_text())
        gate_name, gate_tag = (self.images.locked if locked else self.images.gate).rsplit(":", 1)
        app_name, app_tag = self.images.app.rsplit(":", 1)
        (wrapper / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(HERE / "kustomize" / overlay, wrapper)],
            "nameSuffix": f"-{suffix}",
            "images": [
                {"name": "registry.example.com/my-product/entitlement-gate", "newName": gate_name, "newTag": gate_tag},
                {"name": "registry.example.com/my-product/app", "newName": app_name, "newTag": app_tag}],
            # The open-image overlay's key file (a placeholder in the repository) is the emulator's.
            "configMapGenerator": [{"name": "entitlement-gate-public-key", "namespace": "my-product",
                                    "behavior": "replace", "files": ["public-key.pem"]}]
            if overlay == "example" else [],
        }))
        return list(yaml.safe_load_all(run([self.kubectl, "kustomize", wrapper]).stdout))


def for_podman(docs, work, restart_policy):
    """The rendered manifests as podman 4.3 can play them, given what a kubelet and a cluster give
    a pod and podman does not. Nothing else changes:
    - hostNetwork: the pods reach the emulator on the host's 127.0.0.1, where an EKS pod has a route
      to AWS's endpoints. containerPort entries go: podman refuses port mappings on the host's
      network, and they map nothing in Kubernetes either.
    - restartPolicy: OnFailure for a pod that should start, Never for one that should be refused.
      podman 4.3 applies a Deployment's Always to init containers too: a gate that exits 0 is
      restarted in a loop until kube play gives up; and it restarts a failed init container at
      once, about 60 times in 20 s, where the kubelet backs off.
    - The termination message: the kubelet bind-mounts a writable file at each container's
      terminationMessagePath (/dev/termination-log when unset) and reads it when the container
      ends; podman does neither, so each is a file of this run's, mounted there.
    - emptyDir volumes become the kubelet's: a directory on the node, mode 0777, empty. podman's
      own emptyDir is a volume that copies up the image's directory at the mount path, owner
      included: the state directory the Dockerfile gives UID 65532 (for ECS's Docker volumes) is
      then not writable by a meter that a mesh component runs as another UID.
    - Secrets become ConfigMaps with the same keys and mounts, named for this run: podman 4.3
      crashes on a secret volume and cannot put a Secret it read from the YAML into env. (podman
      keeps each ConfigMap volume as a named volume and reuses one of the same name: run-named,
      and removed with the pod.)
    - ServiceAccounts go: IRSA means nothing here.
    Returns the documents and, per container name, its termination message file."""
    played, messages = [], {}
    secrets_named = {d["metadata"]["name"]: f"{d['metadata']['name']}-{RUN}" for d in docs if d["kind"] == "Secret"}
    for doc in docs:
        if doc["kind"] == "ServiceAccount":
            continue
        if doc["kind"] == "Secret":
            doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": secrets_named[doc["metadata"]["name"]]},
                   "data": doc.get("stringData", {})}
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            spec["hostNetwork"] = True
            spec["restartPolicy"] = restart_policy
            for volume in spec.get("volumes", []):
                if "emptyDir" in volume:
                    directory = work / "volumes" / doc["metadata"]["name"] / volume["name"]
                    directory.mkdir(parents=True)
                    directory.chmod(0o777)
                    del volume["emptyDir"]
                    volume["hostPath"] = {"path": str(directory), "type": "Directory"}
                if "secret" in volume:
                    source = volume.pop("secret")
                    volume["configMap"] = {"name": secrets_named[source["secretName"]], "items": source.get("items", [])}
            for index, container in enumerate(spec.get("initContainers", []) + spec["containers"]):
                container.pop("ports", None)
                for variable in container.get("env", []):
                    reference = variable.get("valueFrom", {}).pop("secretKeyRef", None)
                    if reference:
                        variable["valueFrom"]["configMapKeyRef"] = {**reference, "name": secrets_named[reference["name"]]}
                message = work / "termination" / f"{doc['metadata']['name']}-{container['name']}"
                message.parent.mkdir(exist_ok=True)
                message.write_text("")
                message.chmod(0o666)  # as the kubelet's: any container UID writes it
                messages[container["name"]] = message
                volume = f"termination-message-{index}"
                spec.setdefault("volumes", []).append(
                    {"name": volume, "hostPath": {"path": str(message), "type": "File"}})
                container.setdefault("volumeMounts", []).append(
                    {"name": volume, "mountPath": container.get("terminationMessagePath", "/dev/termination-log")})
        played.append(doc)
    return played, messages


# --- pods -------------------------------------------------------------------------------------

class Pod:
    """One rendered Deployment, played by podman as the pod <deployment>-pod-0."""

    live = []  # every pod played, removed at the end whatever happened

    def __init__(self, docs, work, configmaps, expect_start):
        self.work, self.configmaps = work, configmaps
        self.docs, self.messages = for_podman(docs, work, "OnFailure" if expect_start else "Never")
        deployment = next(d for d in self.docs if d["kind"] == "Deployment")
        check(RUN in deployment["metadata"]["name"], f"pod name {deployment['metadata']['name']} lacks the run id")
        self.deployment = deployment
        # What `podman pod stop` waits before SIGKILL, as the kubelet does (Kubernetes' default 30).
        self.grace = int(deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30))
        self.name = deployment["metadata"]["name"] + "-pod-0"
        self.file = work / f"{deployment['metadata']['name']}.yaml"
        self.file.write_text(yaml.safe_dump_all(self.docs))

    def play(self):
        """podman kube play; returns (exit code, output)."""
        Pod.live.append(self)
        args = ["kube", "play"]
        for configmap in self.configmaps:
            args += ["--configmap", configmap]
        done = podman(*args, self.file, check_rc=False, timeout=120)
        return done.returncode, done.stdout + done.stderr

    def start(self):
        code, output = self.play()
        check(code == 0, f"{self.name} did not start (kube play exited {code}): {output.strip()[-1500:]}")
        self.uid = self.inspect_pod("{{.Id}}")
        return self

    def refused(self, gate_code):
        """Plays a pod whose gate must refuse it: kube play reports the init container's exit code
        and the app container is never started."""
        code, output = self.play()
        check(code != 0 and f"exited with code {gate_code}" in output,
              f"{self.name}: kube play exited {code}, not with the gate's exit {gate_code}: {output.strip()[-1500:]}")
        check(self.state("entitlement-gate") == ("exited", gate_code),
              f"{self.name}: the gate container is {self.state('entitlement-gate')}, not exited {gate_code}")
        check(self.inspect("app", "{{.State.Status}}") == "created"
              and self.inspect("app", "{{.State.StartedAt.IsZero}}") == "true",
              f"{self.name}: the app container was started although the gate refused")
        return self

    def container(self, name):
        return f"{self.name}-{name}"

    def inspect(self, container, template):
        return podman("inspect", self.container(container), "--format", template).stdout.strip()

    def inspect_pod(self, template):
        return podman("pod", "inspect", self.name, "--format", template).stdout.strip()

    def state(self, container):
        status, code = self.inspect(container, "{{.State.Status}} {{.State.ExitCode}}").split()
        return status, int(code)

    def logs(self, container):
        done = podman("logs", self.container(container), check_rc=False)
        return done.stdout + done.stderr

    def log_lines(self, container, prefix):
        return [line for line in self.logs(container).splitlines() if line.startswith(prefix)]

    def wait_log(self, container, prefix, count=1, timeout=90.0):
        return wait_for(f"{count} line(s) '{prefix}...' from {self.container(container)}",
                        lambda: (lambda lines: lines if len(lines) >= count else None)(
                            self.log_lines(container, prefix)), timeout)

    def app(self, kind, count=1):
        """The app's KIND lines (tests/runtime/app/app.sh) once there are COUNT, as dictionaries."""
        self.wait_log("app", kind + " ", count)
        return [dict(re.findall(r"(\w+)=(.*?)(?= \w+=|$)", line[len(kind) + 1:]))
                for line in self.log_lines("app", kind + " ")]

    def message(self, container):
        return self.messages[container].read_text()

    def stop(self):
        """As the kubelet stops a pod: SIGTERM to every container, SIGKILL after the grace period.
        Returns the seconds it took."""
        started = time.monotonic()
        podman("pod", "stop", "-t", self.grace, self.name, timeout=self.grace + 60)
        return time.monotonic() - started

    def down(self):
        """Removes the pod, keeping each container's log (and podman's view of it) in the run's
        directory for a failure's diagnosis."""
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        for name in podman("ps", "-a", "--filter", f"pod={self.name}", "--format", "{{.Names}}",
                           check_rc=False).stdout.split():
            done = podman("logs", name, check_rc=False)
            state = podman("inspect", name, "--format", "{{.State.Status}} {{.State.ExitCode}} "
                           "restarts={{.RestartCount}}", check_rc=False).stdout
            (logs / f"{name}.log").write_text(f"# {state}\n{done.stdout}{done.stderr}")
        podman("kube", "down", self.file, check_rc=False)
        podman("pod", "rm", "-f", self.name, check_rc=False)
        # kube down leaves the named volumes podman made of the ConfigMaps (another pod of the
        # run may still use one: the last to go removes it).
        spec = self.deployment["spec"]["template"]["spec"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                podman("volume", "rm", volume["configMap"]["name"], check_rc=False)
        if self in Pod.live:
            Pod.live.remove(self)

    @classmethod
    def remove_all(cls):
        for pod in list(cls.live):
            pod.down()


def process_status(pod, container):
    """What the kernel says of a running container's process: /proc/PID/status fields."""
    pid = pod.inspect(container, "{{.State.Pid}}")
    fields = dict(line.split(":", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines())
    return pid, {key: value.split() for key, value in fields.items()}


def check_gate_container(pod, container, uid=65532):
    """What a platform engineer checks of a vendor's container before admitting it: its settings as
    the runtime applied them, and, while it runs, its process as the kernel sees it: UID (the
    image's 65532, or the mesh proxy's a mesh component sets), no capabilities, no privilege
    escalation, a seccomp filter, a read-only root, a memory limit, listening on loopback only."""
    name = pod.container(container)
    user = pod.inspect(container, "{{.Config.User}}")
    check(user.split(":")[0] == str(uid), f"{name}: runs as {user!r}, not {uid}")
    check(pod.inspect(container, "{{.HostConfig.ReadonlyRootfs}}") == "true", f"{name}: root filesystem writable")
    check(pod.inspect(container, "{{.HostConfig.Memory}}") == str(64 * 1024 * 1024), f"{name}: no 64 MiB memory limit")
    check("no-new-privileges" in pod.inspect(container, "{{.HostConfig.SecurityOpt}}"),
          f"{name}: privilege escalation not disabled")
    if pod.inspect(container, "{{.State.Status}}") == "running":
        pid, status = process_status(pod, container)
        check(status["Uid"] == [str(uid)] * 4, f"{name}: process UIDs {status['Uid']}, not {uid}")
        check(status["CapEff"] == ["0000000000000000"] and status["CapPrm"] == ["0000000000000000"],
              f"{name}: capabilities {status['CapEff']}")
        check(status["NoNewPrivs"] == ["1"], f"{name}: NoNewPrivs {status['NoNewPrivs']}")
        check(status["Seccomp"] == ["2"], f"{name}: no seccomp filter (Seccomp {status['Seccomp']})")
        listening = run(["ss", "-Hltnp"]).stdout
        mine = [line.split()[3] for line in listening.splitlines() if f"pid={pid}," in line]
        check(mine and all(address.startswith("127.0.0.1:") for address in mine),
              f"{name}: listens on {mine}, not only on the pod's loopback")
        # The root filesystem is read-only; what differs from the image is only where the runtime
        # made its mount points (and /etc's hosts, hostname, resolv.conf).
        mounts = {m["Destination"] for m in json.loads(pod.inspect(container, "{{json .Mounts}}"))}
        allowed = {str(parent) for path in mounts | {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}
                   for parent in [pathlib.Path(path), *pathlib.Path(path).parents]}
        changed = [line.split(None, 1)[1] for line in podman("diff", name).stdout.splitlines()]
        check(set(changed) <= allowed, f"{name}: changed in its image's filesystem: {sorted(set(changed) - allowed)}")


def run_probe(pod, container):
    """The container's startupProbe command, as rendered, run in it (podman 4.3 runs no startup or
    readiness probes): it must pass once the sidecar is ready."""
    spec = pod.deployment["spec"]["template"]["spec"]
    command = next(c for c in spec["containers"] if c["name"] == container)["startupProbe"]["exec"]["command"]
    wait_for(f"{pod.container(container)}'s startup probe {command}",
             lambda: podman("exec", pod.container(container), *command, check_rc=False).returncode == 0)


def check_refusal_reason(pod, expected):
    """The reason is where an operator reads it: the gate's log (kubectl logs) and its termination
    message (kubectl describe pod), the same sentence, naming EXPECTED."""
    message = pod.message("entitlement-gate").strip()
    log = pod.logs("entitlement-gate")
    check(message, f"{pod.name}: the gate left no termination message")
    check(len(message.encode()) <= 4096, f"{pod.name}: termination message over Kubernetes' 4096 bytes")
    check(re.search(expected, message), f"{pod.name}: the termination message does not say {expected!r}: {message}")
    check(message.splitlines()[0] in log, f"{pod.name}: the termination message is not in the gate's log:\n{log}")
    return message


# --- scenarios --------------------------------------------------------------------------------

class Context:
    def __init__(self, work, images, emulator, renderer, configmaps):
        self.work, self.images, self.emulator, self.render, self.configmaps = (
            work, images, emulator, renderer, configmaps)
        self.notes = []

    def pod(self, docs, expect_start=True):
        return Pod(docs, self.work, self.configmaps, expect_start)

    def note(self, text):
        self.notes.append(text)
        say(f"    {text}")


def scenario_image(ctx):
    """The image as a registry scanner and an operator see it, open and locked."""
    version = cargo_version()
    for tag, build in ((ctx.images.gate, "open build"), (ctx.images.locked, "locked build")):
        config = json.loads(podman("image", "inspect", tag).stdout)[0]["Config"]
        check(config.get("User") == "65532:65532", f"{tag}: runs as {config.get('User')!r}, not 65532:65532")
        check(config.get("Entrypoint") == ["/entitlement-gate"] and config.get("Cmd") == ["check"],
              f"{tag}: entrypoint {config.get('Entrypoint')} cmd {config.get('Cmd')}")
        check(not config.get("ExposedPorts"), f"{tag}: exposes {config.get('ExposedPorts')}")
        baked = [e for e in config.get("Env", []) if e.startswith(("AWS_", "ENTITLEMENT_GATE_"))]
        check(not baked, f"{tag}: configuration baked into the image: {baked}")
        labels = config.get("Labels") or {}
        for key, expected in (("title", "entitlement-gate"), ("version", version), ("licenses", "Apache-2.0"),
                              ("source", "https://example.invalid/runtime-check")):
            check(labels.get(f"org.opencontainers.image.{key}") == expected,
                  f"{tag}: label org.opencontainers.image.{key} is {labels.get(f'org.opencontainers.image.' + key)!r}")
        check("Marketplace" in labels.get("org.opencontainers.image.description", ""), f"{tag}: description label")
        shown = podman("run", "--rm", tag, "--version").stdout
        check(shown.startswith(f"entitlement-gate {version}") and build in shown,
              f"{tag}: --version says {shown!r}, not version {version} and {build}")
        if build == "locked build":
            check(LOCKED_PRODUCT in shown, f"{tag}: --version does not name {LOCKED_PRODUCT}: {shown!r}")
        shell = podman("run", "--rm", "--entrypoint", "/bin/sh", tag, "-c", "true", check_rc=False)
        check(shell.returncode != 0 and "no such file" in shell.stderr.lower(),
              f"{tag}: an operator's shell ran in it (exit {shell.returncode})")
        check_filesystem(ctx, tag)
    # A volume with copy-up at the meter's state directory (ECS's task volumes, Docker's and
    # podman's own volumes) takes the image directory's owner: writable by the image's user.
    written = podman("run", "--rm", "-v", "/var/lib/entitlement-gate/meter", "--entrypoint", "/bin/busybox",
                     ctx.images.app, "touch", "/var/lib/entitlement-gate/meter/written", check_rc=False)
    check(written.returncode == 0, f"the image's user cannot write a volume at the state directory: {written.stderr}")
    size = int(podman("image", "inspect", ctx.images.gate, "--format", "{{.Size}}").stdout)
    base = int(podman("image", "inspect", ctx.images.base, "--format", "{{.Size}}").stdout)
    ctx.note(f"image size {size / 1e6:.2f} MB ({(size - base) / 1e6:.2f} MB over the test-only base's "
             f"{base / 1e6:.2f} MB)")
    check_ca_store(ctx)


def check_ca_store(ctx):
    """The binary trusts the roots at the image's CA bundle path, and only those: through a TLS
    front for the emulator whose certificate comes from a CA of this run, a check run in the image
    succeeds when that CA is added to the image's bundle (mounted over it, as an operator mounts
    a proxy's), and fails on the image's bundle as built. With the roots the image carries (checked
    above), that is AWS's endpoints trusted."""
    front = TlsFront(ctx.work, ctx.emulator.url)
    try:
        image_bundle = ctx.work / "image-ca-bundle.pem"
        container = f"{RUN}-bundle"
        podman("create", "--name", container, ctx.images.gate)
        try:
            podman("cp", f"{container}:/etc/ssl/certs/ca-certificates.crt", image_bundle)
        finally:
            podman("rm", "-f", container, check_rc=False)
        with_test_ca = ctx.work / "ca-bundle-with-test-ca.pem"
        with_test_ca.write_text(image_bundle.read_text() + front.ca.read_text())
        codes = {}
        for name, bundle in (("with", with_test_ca), ("without", image_bundle)):
            done = podman("run", "--rm", "--network", "host",
                          "-e", f"AWS_ENDPOINT_URL_MARKETPLACE_METERING={front.url}", "-e", f"AWS_REGION={REGION}",
                          "-e", "AWS_ACCESS_KEY_ID=AKIDRUNTIMECHECK", "-e", "AWS_SECRET_ACCESS_KEY=runtime-check",
                          "-e", "AWS_EC2_METADATA_DISABLED=true", "-e", "ENTITLEMENT_GATE_DEADLINE=5s",
                          "-v", f"{ctx.emulator.key}:/key.pem:ro",
                          "-v", f"{bundle}:/etc/ssl/certs/ca-certificates.crt:ro", ctx.images.gate,
                          "check", "--product-code", PAID_HOURLY, "--public-key-file", "/key.pem", check_rc=False)
            codes[name] = (done.returncode, done.stderr.strip().splitlines()[-1:] or [""])
        check(codes["with"][0] == 0, f"over TLS, with the test CA in the image's bundle, the check exited "
              f"{codes['with'][0]}: {codes['with'][1][0]}")
        check(codes["without"][0] != 0, "over TLS, the check trusted a CA that is not in the image's bundle")
    finally:
        front.stop()


class TlsFront:
    """TLS on 127.0.0.1 in front of the emulator, with a certificate for 127.0.0.1 from a CA made
    for this run (openssl)."""

    def __init__(self, work, upstream):
        directory = work / "tls"
        directory.mkdir()
        self.ca = directory / "ca.pem"
        key, cert = directory / "server.key", directory / "server.pem"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        run(["openssl", "req", "-x509", *ec, "-keyout", directory / "ca.key", "-out", self.ca, "-days", "1",
             "-subj", "/CN=entitlement-gate runtime check test CA"])
        run(["openssl", "req", *ec, "-keyout", key, "-out", directory / "server.csr", "-subj", "/CN=127.0.0.1"])
        (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        run(["openssl", "x509", "-req", "-in", directory / "server.csr", "-CA", self.ca, "-CAkey",
             directory / "ca.key", "-CAcreateserial", "-out", cert, "-days", "1", "-extfile", directory / "server.ext"])
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.upstream = urllib.parse.urlsplit(upstream)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.relay, args=(client,), daemon=True).start()

    def relay(self, client):
        try:
            with self.context.wrap_socket(client, server_side=True) as tls, socket.create_connection(
                    (self.upstream.hostname, self.upstream.port), timeout=10) as upstream:
                def pump(source, sink):
                    try:
                        while data := source.recv(65536):
                            sink.sendall(data)
                    except OSError:
                        pass
                    finally:
                        for closing in (sink, source):
                            try:
                                closing.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass
                back = threading.Thread(target=pump, args=(upstream, tls), daemon=True)
                back.start()
                pump(tls, upstream)
                back.join(timeout=10)
        except (OSError, ssl.SSLError):
            client.close()  # the client refused the certificate: what the negative case expects

    def stop(self):
        self.listener.close()


def check_filesystem(ctx, tag):
    """Every file of the image, as `podman export` lists it."""
    container = f"{RUN}-image-{secrets.token_hex(2)}"
    podman("create", "--name", container, tag)
    try:
        export = ctx.work / f"{container}.tar"
        podman("export", "-o", export, container)
    finally:
        podman("rm", "-f", container, check_rc=False)
    with tarfile.open(export) as image:
        members = {m.name.lstrip("./"): m for m in image.getmembers()}
        executables = sorted(n for n, m in members.items() if m.isfile() and m.mode & 0o111)
        check(executables == ["entitlement-gate"], f"{tag}: executables besides the gate: {executables}")
        special = sorted(n for n, m in members.items() if m.isfile() and m.mode & 0o6000)
        check(not special, f"{tag}: setuid or setgid files: {special}")
        binary = members["entitlement-gate"]
        check(binary.uid == 0 and binary.mode & 0o777 == 0o755,
              f"{tag}: /entitlement-gate is {binary.uid}:{oct(binary.mode)}: its user must not be able to replace it")
        state = members.get("var/lib/entitlement-gate/meter")
        check(state is not None and state.isdir() and state.uid == 65532,
              f"{tag}: the meter's state directory is missing or not owned by 65532")
        passwd = image.extractfile("etc/passwd").read().decode()
        check(re.search(r"^nonroot:x:65532:65532:", passwd, re.M), f"{tag}: /etc/passwd has no nonroot 65532")
        os_release = image.extractfile(members["usr/lib/os-release"]).read().decode()
        check("ID=debian" in os_release and 'VERSION_ID="12"' in os_release,
              f"{tag}: /etc/os-release does not say Debian 12, which scanners read for the base")
        packages = {n.rsplit("/", 1)[1] for n in members if n.startswith("var/lib/dpkg/status.d/")}
        check({"base-files", "ca-certificates", "netbase", "tzdata"} <= packages,
              f"{tag}: scanners read the base's packages in /var/lib/dpkg/status.d, which lists {sorted(packages)}")
        check("etc/ssl/certs/ca-certificates.crt" in members, f"{tag}: no CA bundle at /etc/ssl/certs/ca-certificates.crt")
        bundle = ctx.work / f"{container}-ca.pem"
        bundle.write_bytes(image.extractfile("etc/ssl/certs/ca-certificates.crt").read())
        image.extract("entitlement-gate", ctx.work / container, filter="data")
    roots = ssl.create_default_context(cafile=str(bundle)).get_ca_certs()
    names = {dict(item[0] for item in root["subject"]).get("commonName") for root in roots}
    check(len(roots) >= 100 and {"Amazon Root CA 1", "Starfield Services Root Certificate Authority - G2"} <= names,
          f"{tag}: the CA bundle has {len(roots)} roots, without the ones AWS's endpoints chain to")
    run([sys.executable, ROOT / ".ci" / "check_binary.py", ctx.work / container / "entitlement-gate", "amd64"])


def scenario_hourly_helm(ctx):
    """Hourly pricing from helm template: the entitled buyer's app starts and verifies."""
    registered = ctx.emulator.calls("RegisterUsage")
    pod = ctx.pod(ctx.render.helm_template(f"{RUN}-hourly", [], productCode=PAID_HOURLY)).start()
    try:
        [app] = pod.app("APP")
        [handoff] = pod.app("HANDOFF")
        check(app["workload"] == pod.uid,
              f"the app's workload id {app['workload']!r} is not the pod's UID {pod.uid} (downward API)")
        check(handoff == {"owner": "65532", "product": PAID_HOURLY},
              f"entitlement.json on the handoff volume: {handoff} (the gate runs as 65532)")
        [verify] = pod.app("VERIFY")
        check(verify == {"own": "0", "other": "4"},
              f"verify in the app: {verify}; the handoff must verify with the pod's own UID (0) and no other (4)")
        check(ctx.emulator.calls("RegisterUsage") - registered == 1, "RegisterUsage was not called exactly once")
        check(pod.state("app")[0] == "running", "the app is not running")
        stopped = pod.stop()
        check(pod.state("app") == ("exited", 0), f"the app ended {pod.state('app')} on SIGTERM")
        ctx.note(f"stopped in {stopped:.1f} s")
    finally:
        pod.down()


def scenario_unsubscribed_helm(ctx):
    """Hourly pricing: an unsubscribed buyer's pod never starts its app, and says why."""
    pod = ctx.pod(ctx.render.helm_template(f"{RUN}-unpaid", [], productCode=UNPAID_HOURLY), expect_start=False)
    try:
        pod.refused(3)
        message = check_refusal_reason(pod, r"(?i)subscri")
        check_gate_container(pod, "entitlement-gate")
        ctx.note(f"termination message: {message.strip()[:160]}")
    finally:
        pod.down()


def scenario_metering_helm(ctx):
    """Custom dimensions: usage through the regular-sidecar meter, a meter restart, the stop's flush."""
    port = free_port()
    pod = ctx.pod(ctx.render.helm_template(f"{RUN}-metering", ["metering"], productCode=METERED_HELM,
                                           **{"metering.port": port})).start()
    try:
        run_probe(pod, "entitlement-gate-meter")
        check_gate_container(pod, "entitlement-gate-meter")
        [handoff] = pod.app("HANDOFF")
        check(handoff.get("owner") == "65532", f"entitlement.json on the handoff volume: {handoff}")
        check(pod.app("VERIFY") == [{"own": "0", "other": "4"}], f"verify in the app: {pod.app('VERIFY')}")
        pod.app("ACK", count=10)
        # The meter's process dies as under the OOM killer or a crash: podman restarts the container,
        # on the same state volume, as the kubelet would.
        pid = pod.inspect("entitlement-gate-meter", "{{.State.Pid}}")
        os.kill(int(pid), signal.SIGKILL)
        wait_for("the meter's restart", lambda: pod.inspect("entitlement-gate-meter", "{{.RestartCount}}") != "0"
                 and pod.inspect("entitlement-gate-meter", "{{.State.Status}}") == "running")
        run_probe(pod, "entitlement-gate-meter")
        [done] = pod.app("USAGE DONE")
        acknowledged = acknowledged_units(pod)
        check(str(acknowledged) == done["units"], f"the app counted {done['units']} units, its ACK lines {acknowledged}")
        check_state_volume(pod, "entitlement-gate-meter")
        resent = len(pod.log_lines("app", "RESEND "))
        stopped = pod.stop()
        check_flushed(ctx, pod, METERED_HELM, acknowledged, stopped)
        ctx.note(f"the meter was killed (SIGKILL) after 10 or more acknowledged reports and restarted by podman "
                 f"({pod.inspect('entitlement-gate-meter', '{{.RestartCount}}')} restart); the app resent "
                 f"{resent} report(s) meanwhile")
    finally:
        pod.down()


def acknowledged_units(pod):
    """The units the meter acknowledged, once per report id (a resend is acknowledged as a duplicate)."""
    units = {}
    for line in pod.app("ACK"):
        units.setdefault(line["id"], int(line["quantity"]))
    return sum(units.values())


def check_state_volume(pod, container, uid=65532):
    """The meter's state lives on its volume, written by the meter's UID (nothing in the image)."""
    mounts = json.loads(pod.inspect(container, "{{json .Mounts}}"))
    [state] = [m for m in mounts if m["Destination"] == "/var/lib/entitlement-gate/meter"]
    files = [p for p in pathlib.Path(state["Source"]).rglob("*") if p.is_file()]
    check(files and all(p.stat().st_uid == uid for p in files),
          f"{pod.container(container)}: state files {[(str(p), p.stat().st_uid) for p in files]}, not the meter's ({uid})")


def check_flushed(ctx, pod, product, acknowledged, stopped):
    """After SIGTERM the meter sent the open hour and ended by itself (exit 0) within the grace: the
    ledger holds exactly the units it acknowledged, once."""
    records = [r for r in ctx.emulator.ledger(product) if r["dimension"] == "requests"]
    billed = sum(decimal.Decimal(r["quantity"]) for r in records)
    check(billed == acknowledged, f"the ledger holds {billed} requests for {product}, the meter acknowledged "
          f"{acknowledged}: {records}")
    hours = [r["timestamp"] for r in records]
    check(len(hours) == len(set(hours)), f"an hour was billed twice: {records}")
    meter = pod.state("entitlement-gate-meter")
    check(meter == ("exited", 0), f"the meter ended {meter} after SIGTERM: 0 means everything was sent\n"
          + pod.logs("entitlement-gate-meter")[-3000:])
    check(stopped < pod.grace, f"the pod took {stopped:.1f} s to stop: the meter was killed at the grace period")
    ctx.note(f"acknowledged {acknowledged} units, ledger {billed} in {len(records)} record(s); "
             f"stopped in {stopped:.1f} s")


def scenario_contract_helm(ctx):
    """Contract pricing: 3 pods on 2 seats; the third never starts; a stopped pod's seat is back at once."""
    before = ctx.emulator.seats(CONTRACT_HELM)
    check(before == (0, []), f"seats in use before the scenario: {before}")

    def contract_pod(name, expect_start=True):
        docs = ctx.render.helm_template(f"{RUN}-{name}", ["contract"], **{
            "license.productId": CONTRACT_HELM, "license.watch.port": free_port()})
        return ctx.pod(docs, expect_start)

    first, second = contract_pod("seat-a").start(), None
    pods = [first]
    try:
        second = contract_pod("seat-b").start()
        pods.append(second)
        for pod in (first, second):
            check_license_app(pod)
        check_gate_container(first, "entitlement-gate-license")
        check(ctx.emulator.seats(CONTRACT_HELM) == (2, sorted([first.uid, second.uid])),
              f"seats: {ctx.emulator.seats(CONTRACT_HELM)}, not the two pods' UIDs")
        third = contract_pod("seat-c", expect_start=False)
        pods.append(third)
        third.refused(3)
        message = check_refusal_reason(third, r"(?i)seat")
        stopped = first.stop()
        check(ctx.emulator.seats(CONTRACT_HELM) == (1, [second.uid]),
              f"seats right after the pod stopped: {ctx.emulator.seats(CONTRACT_HELM)}, the seat is not back")
        check(first.state("entitlement-gate-license") == ("exited", 0),
              f"the watch ended {first.state('entitlement-gate-license')} after SIGTERM: 0 means checked in")
        third.down()
        again = contract_pod("seat-c2").start()
        pods.append(again)
        check_license_app(again)
        for pod in (second, again):
            pod.stop()
        check(ctx.emulator.seats(CONTRACT_HELM) == (0, []), f"seats left held: {ctx.emulator.seats(CONTRACT_HELM)}")
        ctx.note(f"third pod refused: {message.strip()[:120]}; first stopped in {stopped:.1f} s, "
                 "its seat back at once, the third's next start granted")
    finally:
        for pod in pods:
            pod.down()


def check_license_app(pod):
    [license] = pod.app("LICENSE")
    check(license["state"] == "held" and license["api"].startswith("{"),
          f"{pod.name}: license.json state {license['state']!r}, the watch's API answered {license['api']!r}")


def scenario_example_kustomize(ctx):
    """overlays/example: open image pinned by digest (here the local one), metering, Istio's UID."""
    require_free(OVERLAY_METER_PORT, "the example overlay's meter")
    pod = ctx.pod(ctx.render.kustomize("example")).start()
    try:
        [app] = pod.app("APP")
        check(app["workload"] == pod.uid, f"the app's workload id is not the pod's UID: {app}")
        [handoff] = pod.app("HANDOFF")
        check(handoff.get("owner") == "1337", f"entitlement.json on the handoff volume: {handoff}; the "
              "mesh-istio component runs the gate as Istio's proxy UID 1337")
        check(pod.app("VERIFY") == [{"own": "0", "other": "4"}], f"verify in the app: {pod.app('VERIFY')}")
        run_probe(pod, "entitlement-gate-meter")
        check_gate_container(pod, "entitlement-gate-meter", uid=1337)
        pod.app("USAGE DONE")
        acknowledged = acknowledged_units(pod)
        check_state_volume(pod, "entitlement-gate-meter", uid=1337)
        stopped = pod.stop()
        check_flushed(ctx, pod, METERED_KUSTOMIZE, acknowledged, stopped)
    finally:
        pod.down()


def scenario_contract_kustomize(ctx):
    """overlays/contract: a buyer outside AWS (license token, GetAccessToken, STS), one seat."""
    require_free(OVERLAY_WATCH_PORT, "the contract overlay's license watch")
    # The Secret the buyer creates (AWS Marketplace's instructions), as `kubectl create secret` would.
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "awsmp-license-access-config"},
              "stringData": {"license_token": LICENSE_TOKEN, "iam_role": BUYER_ROLE}}
    exchanged = ctx.emulator.calls("GetAccessToken"), ctx.emulator.calls("AssumeRoleWithWebIdentity")
    pod = ctx.pod([secret] + ctx.render.kustomize("contract")).start()
    pods = [pod]
    try:
        check_license_app(pod)
        check_gate_container(pod, "entitlement-gate-license")
        check(ctx.emulator.calls("GetAccessToken") > exchanged[0]
              and ctx.emulator.calls("AssumeRoleWithWebIdentity") > exchanged[1],
              "the gate did not exchange the buyer's license token (GetAccessToken, then STS)")
        check(ctx.emulator.seats(CONTRACT_KUSTOMIZE) == (1, [pod.uid]), f"seats: {ctx.emulator.seats(CONTRACT_KUSTOMIZE)}")
        other = ctx.pod([secret] + ctx.render.kustomize("contract", "b"), expect_start=False)
        pods.append(other)
        other.refused(3)
        check_refusal_reason(other, r"(?i)seat")
        stopped = pod.stop()
        check(ctx.emulator.seats(CONTRACT_KUSTOMIZE) == (0, []),
              f"seats right after the pod stopped: {ctx.emulator.seats(CONTRACT_KUSTOMIZE)}")
        check(pod.state("entitlement-gate-license") == ("exited", 0),
              f"the watch ended {pod.state('entitlement-gate-license')} after SIGTERM")
        ctx.note(f"second pod refused on the one seat; first stopped in {stopped:.1f} s, seat back at once")
    finally:
        for item in pods:
            item.down()


def scenario_contract_locked_kustomize(ctx):
    """A locked image refuses another License Manager than AWS's (exit 2), before any call."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "awsmp-license-access-config"},
              "stringData": {"license_token": LICENSE_TOKEN, "iam_role": BUYER_ROLE}}
    calls = ctx.emulator.calls("CheckoutLicense"), ctx.emulator.calls("GetAccessToken")
    pod = ctx.pod([secret] + ctx.render.kustomize("contract-locked", locked=True), expect_start=False)
    try:
        pod.refused(2)
        # (The test overrides both endpoints the Anywhere path calls; either refusal is the property.)
        message = check_refusal_reason(pod, "AWS_ENDPOINT_URL_(LICENSE_MANAGER|STS)")
        check((ctx.emulator.calls("CheckoutLicense"), ctx.emulator.calls("GetAccessToken")) == calls,
              "the locked gate called the overridden endpoint before refusing it")
        ctx.note(f"termination message: {message.strip()[:160]}")
    finally:
        pod.down()


def scenario_locked_kustomize(ctx):
    """overlays/locked: a locked image refuses a Metering endpoint override (exit 2), before any call."""
    registered = ctx.emulator.calls("RegisterUsage")
    pod = ctx.pod(ctx.render.kustomize("locked", locked=True), expect_start=False)
    try:
        pod.refused(2)
        message = check_refusal_reason(pod, "AWS_ENDPOINT_URL_MARKETPLACE_METERING")
        check(ctx.emulator.calls("RegisterUsage") == registered, "the locked gate called the overridden endpoint")
        ctx.note(f"termination message: {message.strip()[:160]}")
    finally:
        pod.down()


SCENARIOS = {
    "image": scenario_image,
    "hourly-helm": scenario_hourly_helm,
    "unsubscribed-helm": scenario_unsubscribed_helm,
    "metering-helm": scenario_metering_helm,
    "contract-helm": scenario_contract_helm,
    "example-kustomize": scenario_example_kustomize,
    "contract-kustomize": scenario_contract_kustomize,
    "contract-locked-kustomize": scenario_contract_locked_kustomize,
    "locked-kustomize": scenario_locked_kustomize,
}


def main():
    only = None
    if sys.argv[1:2] == ["--only"] and len(sys.argv) == 3:
        only = sys.argv[2].split(",")
        unknown = set(only) - set(SCENARIOS)
        if unknown:
            sys.exit(f"runtime_check.py: no scenario {sorted(unknown)}; there are {list(SCENARIOS)}")
    elif sys.argv[1:]:
        sys.exit(__doc__)
    # SIGTERM (CI's time-out, a Ctrl-C) still removes the pods and images: it unwinds like an error.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("runtime check: terminated"))
    work = ROOT / "target" / "runtime-check" / RUN
    work.mkdir(parents=True)
    leftovers = lambda: {kind: set(podman(*command).stdout.split()) for kind, command in (
        ("pods", ("pod", "ps", "-q")), ("containers", ("ps", "-aq")), ("volumes", ("volume", "ls", "-q")),
        ("images", ("images", "-aq")))}
    before = leftovers()
    say(f"runtime check {RUN}: podman {podman('version', '--format', '{{.Client.Version}}').stdout.strip()}, "
        f"work directory {work.relative_to(ROOT)}")
    emulator = Emulator(os.environ["EMULATOR"], work)
    images = Images(work)
    results = []
    try:
        images.build(os.environ["OPEN_BINARY"], os.environ["LOCKED_BINARY"])
        for name, seconds in images.timings.items():
            say(f"  built {name} in {seconds:.1f} s")
        aws = work / "runtime-check-aws.yaml"
        aws.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": "runtime-check-aws"}, "data": {
            "AWS_ENDPOINT_URL_MARKETPLACE_METERING": emulator.url, "AWS_ENDPOINT_URL_LICENSE_MANAGER": emulator.url,
            "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "AKIDRUNTIMECHECK", "AWS_SECRET_ACCESS_KEY": "runtime-check",
            "AWS_EC2_METADATA_DISABLED": "true"}}))
        anywhere = work / "runtime-check-anywhere.yaml"
        anywhere.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": {"name": "runtime-check-anywhere"}, "data": {
            "AWS_ENDPOINT_URL_LICENSE_MANAGER": emulator.url, "AWS_ENDPOINT_URL_STS": emulator.url,
            "AWS_EC2_METADATA_DISABLED": "true"}}))
        ctx = Context(work, images, emulator, Renderer(os.environ["HELM"], os.environ["KUBECTL"], work, images,
                                                       emulator), [aws, anywhere])
        for name, scenario in SCENARIOS.items():
            if only and name not in only:
                continue
            say(f"--- {name}: {scenario.__doc__.splitlines()[0]}")
            started = time.monotonic()
            try:
                scenario(ctx)
                results.append((name, "ok", time.monotonic() - started))
                say(f"ok {name} ({time.monotonic() - started:.1f} s)")
            except Exception as failure:  # a harness error fails the scenario, not the clean-up
                results.append((name, "FAILED", time.monotonic() - started))
                detail = failure if isinstance(failure, Failure) else "".join(
                    traceback.format_exception(failure)).strip()
                say(f"FAILED {name} ({time.monotonic() - started:.1f} s): {detail}")
    finally:
        Pod.remove_all()
        images.remove()
        emulator.stop()
    after = leftovers()
    leaked = {kind: sorted(after[kind] - before[kind]) for kind in after if after[kind] - before[kind]}
    if leaked:
        results.append(("clean-up", "FAILED", 0.0))
        say(f"FAILED clean-up: left behind by this run: {leaked}")
    say()
    for name, result, seconds in results:
        say(f"  {result:8} {seconds:6.1f} s  {name}")
    passed = sum(r == "ok" for _, r, _ in results)
    failed = sum(r == "FAILED" for _, r, _ in results)
    if not failed:
        shutil.rmtree(work)
    else:
        say(f"the run's files (rendered pods, container logs, termination messages, the emulator's log) stay in "
            f"{work.relative_to(ROOT)}")
    say(f"runtime: {passed} passed, {failed} failed, {len(results) - passed - failed} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
