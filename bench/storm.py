"""A start-up storm: N gates at once against a 5 calls/s RegisterUsage quota.

Usage: storm.py [--gates N] [--quota Q] [--retry-base D] [--retry-cap D] [--label NAME]

Prints the result and appends it to bench/out/storm.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import time

from common import OUT, RELEASE, Emulator, aws_environment

parser = argparse.ArgumentParser()
parser.add_argument("--gates", type=int, default=200)
parser.add_argument("--quota", type=int, default=5)
parser.add_argument("--retry-base", default=None, help="override ENTITLEMENT_GATE_RETRY_BASE")
parser.add_argument("--retry-cap", default=None, help="override ENTITLEMENT_GATE_RETRY_CAP")
parser.add_argument("--label", default="defaults")
args = parser.parse_args()

emulator = Emulator("--quota-per-second", str(args.quota))
extra = {"ENTITLEMENT_GATE_LOG": "error"}
if args.retry_base:
    extra["ENTITLEMENT_GATE_RETRY_BASE"] = args.retry_base
if args.retry_cap:
    extra["ENTITLEMENT_GATE_RETRY_CAP"] = args.retry_cap
environment = aws_environment(emulator, **extra)

started = time.perf_counter()
processes = {}
for _ in range(args.gates):
    process = subprocess.Popen([RELEASE / "entitlement-gate", "check"], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes[process.pid] = process
finished = {}
while len(finished) < len(processes):
    pid, status = os.wait()
    if pid in processes:
        finished[pid] = (os.waitstatus_to_exitcode(status), time.perf_counter() - started)
wall = time.perf_counter() - started
stats = emulator.stats()
emulator.close()

times = sorted(t for _, t in finished.values())
codes = [c for c, _ in finished.values()]
percentile = lambda p: times[min(len(times) - 1, int(p * len(times)))]
ideal = args.gates / args.quota
result = {
    "label": args.label,
    "gates": args.gates,
    "quota_per_second": args.quota,
    "retry_base": args.retry_base or "default",
    "retry_cap": args.retry_cap or "default",
    "exited_0": codes.count(0),
    "exit_codes": {str(c): codes.count(c) for c in sorted(set(codes))},
    "wall_s": round(wall, 2),
    "ideal_s": ideal,
    "wall_over_ideal": round(wall / ideal, 3),
    "calls": stats["calls"],
    "calls_per_gate": round(stats["calls"] / args.gates, 2),
    "throttled": stats["throttled"],
    "finish_s": {"p10": round(percentile(0.1), 2), "p50": round(percentile(0.5), 2),
                 "p90": round(percentile(0.9), 2), "max": round(times[-1], 2)},
}
OUT.mkdir(exist_ok=True)
history = OUT / "storm.json"
runs = json.loads(history.read_text()) if history.exists() else []
history.write_text(json.dumps(runs + [result], indent=2) + "\n")
print(json.dumps(result, indent=2))
