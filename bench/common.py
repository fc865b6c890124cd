"""Shared by the bench scripts: paths, the emulator, and measuring one process."""

import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
OUT = ROOT / "bench" / "out"
PRODUCT = "bench-product"


class Emulator:
    """The release metering-emulator on a free loopback port."""

    def __init__(self, *args):
        self.dir = tempfile.TemporaryDirectory()
        work = pathlib.Path(self.dir.name)
        self.public_key = work / "public-key.pem"
        addr = work / "addr"
        self.process = subprocess.Popen(
            [RELEASE / "metering-emulator", "--listen", "127.0.0.1:0", "--addr-file", addr,
             "--public-key-out", self.public_key, "--entitled", PRODUCT, *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            if addr.exists() and addr.read_text():
                break
            time.sleep(0.01)
        self.url = "http://" + addr.read_text()

    def stats(self):
        with urllib.request.urlopen(self.url + "/_emulator/stats") as response:
            return json.load(response)

    def close(self):
        self.process.terminate()
        self.process.wait()
        self.dir.cleanup()


def aws_environment(emulator, **extra):
    """What ECS/EKS would give a container, pointed at the emulator; nothing from ~/.aws."""
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": "/nonexistent",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",  # boto3 and the AWS CLI read this one
        "AWS_ACCESS_KEY_ID": "AKIDBENCH",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_SESSION_TOKEN": "bench-session",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_MARKETPLACE_METERING": emulator.url,
        "ENTITLEMENT_GATE_PRODUCT_CODE": PRODUCT,
        "ENTITLEMENT_GATE_PUBLIC_KEY_FILE": str(emulator.public_key),
    }
    environment.update(extra)
    return environment


def wall_time(argv, environment):
    """Runs argv; returns (exit code, wall seconds)."""
    started = time.perf_counter()
    code = subprocess.run(argv, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return code, time.perf_counter() - started


def peak_rss_kib(argv, environment):
    """Runs argv under GNU time; returns (exit code, peak RSS in KiB).

    Linux keeps a process's peak RSS across exec, so a child forked straight from this Python
    process would report at least Python's own size; GNU time is a small parent.
    """
    with tempfile.NamedTemporaryFile("r") as report:
        code = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%M", *argv], env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        return code, int(report.read().split()[-1])


def free_port():
    """A loopback port nothing listens on now (the sidecar binds it, and binds it again after a
    restart, so clients keep one address)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_json(url, body=None, timeout=10):
    """GET (or POST `body` as JSON); returns (status, the answer parsed as JSON, or its text if
    it is not JSON, or None if empty)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, answer = error.code, error.read()
    if not answer:
        return status, None
    try:
        return status, json.loads(answer)
    except ValueError:
        return status, answer.decode(errors="replace")


class MeteringEmulator(Emulator):
    """The emulator with a metering period and dimensions, plus its ledger and fault controls."""

    def __init__(self, *args, period="2s", dimensions=("requests", "users")):
        dimension_args = [arg for name in dimensions for arg in ("--dimension", name)]
        super().__init__("--period", period, *dimension_args, *args)

    def ledger(self):
        return http_json(self.url + "/_emulator/ledger")[1]

    def set_faults(self, faults):
        """Replaces the faults (`{}` clears them); see `metering-emulator --help`."""
        status, answer = http_json(self.url + "/_emulator/faults", faults)
        if status not in (200, 204):
            raise RuntimeError(f"the emulator refused faults {faults}: {status} {answer}")


def meter_environment(emulator, state_dir, port, period="2s", **extra):
    """`entitlement-gate meter` against `emulator`, on 127.0.0.1:`port`, state in `state_dir`."""
    return aws_environment(
        emulator,
        ENTITLEMENT_GATE_DIMENSIONS="requests,users",
        ENTITLEMENT_GATE_STATE_DIR=str(state_dir),
        ENTITLEMENT_GATE_METER_LISTEN=f"127.0.0.1:{port}",
        ENTITLEMENT_GATE_METER_PERIOD=period,
        ENTITLEMENT_GATE_TERMINATION_LOG=str(pathlib.Path(state_dir).parent / "termination-log"),
        **extra,
    )


class Sidecar:
    """One release `entitlement-gate meter` process; its log is appended to `log_path`."""

    def __init__(self, environment, port, log_path, binary=None):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = pathlib.Path(log_path)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen([binary or RELEASE / "entitlement-gate", "meter"],
                                            env=environment, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)
        self.started = time.monotonic()

    def wait_ready(self, timeout=60):
        """Waits until /readyz answers 200; returns the seconds since the start, or raises."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the sidecar exited {self.process.returncode} before it was ready; "
                                   f"its log ends:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"the sidecar was not ready within {timeout} s; its log ends:\n{self.log_tail()}")

    def log_tail(self, lines=20):
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self):
        """The Prometheus samples as {'name{labels}': value}."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def peak_rss_kib(self):
        """VmHWM: the process's peak resident set so far."""
        for line in pathlib.Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def kill(self):
        self.process.kill()
        return self.process.wait()

    def stop(self, timeout=120):
        """SIGTERM; returns the exit code (None if it did not exit within `timeout`)."""
        self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
