"""Times one RegisterUsage check by each tool against the same emulator, interleaved.

Usage: compare.py VENV RUNS STATIC_BINARY PROFILING_BINARY

Prints a Markdown table and writes bench/out/compare.json.
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import http.client

from common import OUT, PRODUCT, RELEASE, ROOT, Emulator, aws_environment, peak_rss_kib, wall_time

venv, runs, static_binary, profiling_binary = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
emulator = Emulator()
environment = aws_environment(emulator)

body = json.dumps({"ProductCode": PRODUCT, "PublicKeyVersion": 1, "Nonce": "bench-nonce"})
authorization = ("AWS4-HMAC-SHA256 Credential=AKIDBENCH/20260101/us-east-1/aws-marketplace/aws4_request, "
                 "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "0" * 64)
request_headers = {
    "Content-Type": "application/x-amz-json-1.1",
    "X-Amz-Target": "AWSMPMeteringService.RegisterUsage",
    "X-Amz-Date": "20260101T000000Z",
    "Authorization": authorization,
}
curl = ["curl", "-sS", "--fail", "-o", "/dev/null", "-X", "POST", "--data-binary", body]
for name, value in request_headers.items():
    curl += ["-H", f"{name}: {value}"]

tools = {
    "entitlement-gate check": [str(RELEASE / "entitlement-gate"), "check"],
    "boto3 script": [str(venv / "bin" / "python"), str(ROOT / "bench" / "register_usage_boto3.py")],
    "aws meteringmarketplace register-usage": [
        str(venv / "bin" / "aws"), "meteringmarketplace", "register-usage",
        "--product-code", PRODUCT, "--public-key-version", "1", "--nonce", "bench-nonce",
    ],
    "curl, pre-built request (floor)": curl + [emulator.url + "/"],
}

samples = {name: {"wall_ms": [], "rss_kib": []} for name in tools}
names = list(tools)
for round_number in range(runs + 1):
    # Rotate the order each round so no tool always runs first after another.
    order = names[round_number % len(names):] + names[:round_number % len(names)]
    for name in order:
        code, wall = wall_time(tools[name], environment)
        rss_code, rss = peak_rss_kib(tools[name], environment)
        if code != 0 or rss_code != 0:
            sys.exit(f"{name} exited {code or rss_code}")
        if round_number > 0:  # round 0 warms caches
            samples[name]["wall_ms"].append(wall * 1000)
            samples[name]["rss_kib"].append(rss)

# The emulator alone, over one keep-alive connection: what the floor is made of.
host, port = emulator.url.removeprefix("http://").split(":")
connection = http.client.HTTPConnection(host, int(port))
latencies = []
for _ in range(2000):
    started = time.perf_counter()
    connection.request("POST", "/", body=body, headers=request_headers)
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
    latencies.append((time.perf_counter() - started) * 1000)
connection.close()
calls_served = emulator.stats()["calls"]
emulator.close()


def summary(values):
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


results = {
    "runs": runs,
    "tools": {name: {"wall_ms": summary(s["wall_ms"]), "peak_rss_mib": summary([k / 1024 for k in s["rss_kib"]])}
              for name, s in samples.items()},
    "emulator_request_ms": {**summary(latencies), "p99": sorted(latencies)[int(len(latencies) * 0.99)],
                            "requests": len(latencies)},
    "emulator_calls_served": calls_served,
}
gate = results["tools"]["entitlement-gate check"]["wall_ms"]["median"]
floor = results["tools"]["curl, pre-built request (floor)"]["wall_ms"]["median"]
boto3 = results["tools"]["boto3 script"]["wall_ms"]["median"]
results["ratios"] = {"gate_over_floor": gate / floor, "boto3_over_gate": boto3 / gate}

# Sizes: what ships.
results["sizes_bytes"] = {
    "release binary": (RELEASE / "entitlement-gate").stat().st_size,
    "static musl binary": pathlib.Path(static_binary).stat().st_size,
}

# Instructions for one check, repeatable on a noisy machine, with the functions that cost most.
emulator = Emulator()
with tempfile.TemporaryDirectory() as scratch:
    out_file = os.path.join(scratch, "callgrind.out")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", profiling_binary, "check"],
                   env=aws_environment(emulator), check=True, capture_output=True)
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=no", out_file],
                               check=True, capture_output=True, text=True).stdout
emulator.close()
total = None
by_function = {}
in_summary = False
for line in annotated.splitlines():
    line = line.strip()
    if "PROGRAM TOTALS" in line:
        total = int(line.split()[0].replace(",", ""))
    elif line.endswith("file:function"):
        in_summary = True  # the flat per-function list starts after this header
    elif in_summary and line.startswith("--") and by_function:
        break  # the annotated source (with call-graph lines) follows
    elif in_summary and line[:1].isdigit():
        # "9,588,485 (35.43%)  /path/file.rs:crate::function [binary]": inlined code is listed per
        # source file, so add up the entries of one function.
        count = int(line.split()[0].replace(",", ""))
        location = line.split(")  ", 1)[1]
        function = location.split(":", 1)[1] if ":" in location else location
        function = function.split(" [", 1)[0].strip()
        by_function[function] = by_function.get(function, 0) + count
top = [{"instructions": count, "function": function[:110]}
       for function, count in sorted(by_function.items(), key=lambda item: -item[1])[:5]]
results["callgrind"] = {"instructions": total, "top_functions_self": top}

OUT.mkdir(exist_ok=True)
(OUT / "compare.json").write_text(json.dumps(results, indent=2) + "\n")

lines = [
    f"{runs} interleaved runs each against the same local emulator; wall time and peak RSS per process.",
    "",
    "| tool | wall min | wall median | wall max | peak RSS median | peak RSS max |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
]
for name, result in results["tools"].items():
    wall, rss = result["wall_ms"], result["peak_rss_mib"]
    lines.append(f"| {name} | {wall['min']:.1f} ms | {wall['median']:.1f} ms | {wall['max']:.1f} ms "
                 f"| {rss['median']:.1f} MiB | {rss['max']:.1f} MiB |")
e = results["emulator_request_ms"]
lines += [
    "",
    f"- gate / floor (median wall): {results['ratios']['gate_over_floor']:.2f}x; "
    f"boto3 / gate: {results['ratios']['boto3_over_gate']:.1f}x",
    f"- emulator alone, {e['requests']} keep-alive requests: median {e['median']:.3f} ms, "
    f"p99 {e['p99']:.3f} ms per RegisterUsage (PS256 signing included)",
    f"- release binary {results['sizes_bytes']['release binary']:,} bytes; "
    f"static musl binary {results['sizes_bytes']['static musl binary']:,} bytes",
    f"- one `check` under callgrind: {total:,} instructions; top functions (self, inlined code included):",
]
lines += [f"  - {t['instructions']:,} {t['function']}" for t in top]
report = "\n".join(lines) + "\n"
(OUT / "compare.md").write_text(report)
print(report)
