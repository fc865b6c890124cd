"""Shared by the bench scripts: paths, the emulator, and measuring one process."""

import json
import os
import pathlib
import subprocess
import tempfile
import time
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
