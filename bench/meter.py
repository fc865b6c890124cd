"""Throughput, latency and memory of the metering sidecar, and the disk under it.

Usage: meter.py [--repeats N] [--duration S] [--latency-duration S] [--count N] [--store-choice]

Runs the release `entitlement-gate meter` (the default one-hour period: nothing is sent while
measuring) against the release emulator, loaded by the release `meter-load` over loopback TCP,
each measurement on a fresh sidecar and state directory, repeated N times (median reported):
- throughput: 64 keep-alive connections, single-record reports (each with a unique id, as
  exactly-once clients send them; and once more without ids), closed loop for S seconds; and
  batched requests (--batch records each, with ids);
- latency: 1,000 reports/s, open loop, for S seconds; percentiles from the scheduled send time;
- memory: the sidecar's peak RSS (VmHWM) after N reports (default 1,000,000);
- group commit: changes per committed transaction, from /metrics;
- the disk's limit: fsyncs/s of a small file (write + fsync) in the state directory's
  filesystem, against which group commit is measured;
- the sidecar's binary size;
- with --state-windows W: the state under ids, 1,000 reports/s with unique ids for W id windows of
  --id-window seconds (open loop), the state file sampled every second: bytes per id while the
  first window fills, and the plateau once ids are forgotten a window at a time.
With --store-choice, also builds bench/store-choice (a standalone crate) and reports, for redb
and SQLite (bundled), the binary size over an empty program and transactions/s and records/s at
batch sizes 1 and 64 on the same disk.

The machine's load average is recorded before each measurement. Writes bench/out/meter.json and
bench/out/meter.md.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import tempfile
import time

from common import OUT, RELEASE, ROOT, MeteringEmulator, Sidecar, free_port, meter_environment

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--duration", type=float, default=10, help="seconds of closed-loop throughput")
parser.add_argument("--latency-duration", type=float, default=20, help="seconds at --rate")
parser.add_argument("--rate", type=int, default=1000)
parser.add_argument("--connections", type=int, default=64)
parser.add_argument("--count", type=int, default=1_000_000, help="reports before reading peak RSS")
parser.add_argument("--fsync-seconds", type=float, default=3)
parser.add_argument("--store-choice", action="store_true", help="also measure redb against SQLite")
parser.add_argument("--batch", type=int, default=100, help="records per request for the batched throughput")
parser.add_argument("--state-windows", type=int, default=0,
                    help="id windows of the state measurement (0: none; 2 shows the plateau)")
parser.add_argument("--id-window", type=int, default=60, help="seconds, for the state measurement")
parser.add_argument("--state-parent", default=tempfile.gettempdir(),
                    help="where state directories go (the disk measured)")
args = parser.parse_args()

LOAD = RELEASE / "meter-load"


def load_average():
    return float(pathlib.Path("/proc/loadavg").read_text().split()[0])


def with_sidecar(measure, **settings):
    """Runs `measure(sidecar, port)` against a fresh sidecar and emulator; returns its result
    with the group-commit counters, the peak RSS and the load average before it."""
    emulator = MeteringEmulator(period="1h")
    with tempfile.TemporaryDirectory(dir=args.state_parent, prefix="meter-bench-") as work:
        port = free_port()
        environment = meter_environment(emulator, f"{work}/state", port, period="1h",
                                        ENTITLEMENT_GATE_LOG="warn", **settings)
        sidecar = Sidecar(environment, port, f"{work}/sidecar.log")
        try:
            sidecar.wait_ready()
            before = load_average()
            result = measure(sidecar, port)
            metrics = sidecar.metrics()
            result["load_average_before"] = before
            result["commits"] = int(metrics["entitlement_gate_meter_commits_total"])
            result["changes"] = int(metrics["entitlement_gate_meter_committed_changes_total"])
            result["changes_per_commit"] = result["changes"] / max(result["commits"], 1)
            result["peak_rss_kib"] = sidecar.peak_rss_kib()
            result["state_file_bytes"] = os.path.getsize(f"{work}/state/meter.redb")
            code = sidecar.stop()
            if code != 0:
                raise RuntimeError(f"the sidecar exited {code}:\n" + pathlib.Path(sidecar.log_path).read_text())
        finally:
            if sidecar.process.poll() is None:
                sidecar.kill()
            emulator.close()
    return result


def load(mode, port, *flags):
    argv = [LOAD, mode, "--addr", f"127.0.0.1:{port}", "--connections", str(args.connections), *flags]
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


def fsyncs_per_second(directory, seconds):
    """write + fsync of a small file in `directory`, in a loop: the disk's durable-write rate."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            os.pwrite(fd, b"x" * 512, 0)
            os.fsync(fd)
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        os.close(fd)
        os.unlink(path)


def median_of(runs, *path):
    def value(run):
        for key in path:
            run = run[key]
        return run
    return statistics.median(value(run) for run in runs)


results = {"machine": {"cores": os.cpu_count(), "state_parent": args.state_parent}}
results["binary_bytes"] = (RELEASE / "entitlement-gate").stat().st_size

fsync = []
for _ in range(args.repeats):
    before = load_average()
    fsync.append({"fsyncs_per_second": fsyncs_per_second(args.state_parent, args.fsync_seconds),
                  "load_average_before": before})
results["fsync"] = {"runs": fsync, "median_per_second": median_of(fsync, "fsyncs_per_second")}

throughput = [with_sidecar(lambda _, port: load("throughput", port, "--duration", str(args.duration)))
              for _ in range(args.repeats)]
results["throughput"] = {"runs": throughput,
                         "median_per_second": median_of(throughput, "acknowledged_per_second"),
                         "median_changes_per_commit": median_of(throughput, "changes_per_commit")}
without_ids = [with_sidecar(lambda _, port: load("throughput", port, "--duration", str(args.duration),
                                                 "--no-ids"))
               for _ in range(args.repeats)]
results["throughput_without_ids"] = {"runs": without_ids,
                                     "median_per_second": median_of(without_ids, "acknowledged_per_second")}

batched = [with_sidecar(lambda _, port: load("throughput", port, "--duration", str(args.duration),
                                             "--batch", str(args.batch)))
           for _ in range(args.repeats)]
results["throughput_batched"] = {"runs": batched, "records_per_request": args.batch,
                                 "median_per_second": median_of(batched, "acknowledged_per_second")}

latency = [with_sidecar(lambda _, port: load("latency", port, "--rate", str(args.rate),
                                             "--duration", str(args.latency_duration)))
           for _ in range(args.repeats)]
results["latency"] = {"runs": latency, "rate": args.rate,
                      "median_ms": {q: median_of(latency, "latency_ms", q)
                                    for q in ("p50", "p90", "p99", "p999", "max")}}

count = [with_sidecar(lambda _, port: load("count", port, "--reports", str(args.count)))
         for _ in range(args.repeats)]
results["memory"] = {"runs": count, "reports": args.count,
                     "median_peak_rss_kib": median_of(count, "peak_rss_kib"),
                     "max_peak_rss_kib": max(run["peak_rss_kib"] for run in count)}

def state_growth(sidecar, port):
    """1,000 reports/s with unique ids for the windows asked, sampling the state file."""
    seconds = args.state_windows * args.id_window
    samples = []
    loader = subprocess.Popen([LOAD, "latency", "--addr", f"127.0.0.1:{port}", "--connections", "8",
                               "--rate", "1000", "--duration", str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    while loader.poll() is None:
        metrics = sidecar.metrics()
        samples.append({"s": round(time.monotonic() - started, 1),
                        "reports": sum(v for k, v in metrics.items()
                                       if k.startswith("entitlement_gate_meter_reports_total")),
                        "state_bytes": int(metrics["entitlement_gate_meter_state_bytes"])})
        time.sleep(1)
    out = json.loads(loader.stdout.read())
    first = [s for s in samples if s["s"] <= args.id_window]
    # Growth per id while the first window fills (nothing forgotten yet): a least-squares slope.
    n = len(first)
    mean_r = sum(s["reports"] for s in first) / n
    mean_b = sum(s["state_bytes"] for s in first) / n
    slope = (sum((s["reports"] - mean_r) * (s["state_bytes"] - mean_b) for s in first)
             / max(sum((s["reports"] - mean_r) ** 2 for s in first), 1))
    return {"load": out, "samples": samples, "bytes_per_id": slope,
            "max_state_bytes": max(s["state_bytes"] for s in samples),
            "final_state_bytes": samples[-1]["state_bytes"],
            "ids": samples[-1]["reports"]}


if args.state_windows:
    growth = with_sidecar(state_growth, ENTITLEMENT_GATE_METER_ID_WINDOW=f"{args.id_window}s")
    results["state"] = {**growth, "id_window_s": args.id_window, "windows": args.state_windows}

if args.store_choice:
    probe = ROOT / "bench" / "store-choice"
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet", "--all-features",
                    "--manifest-path", probe / "Cargo.toml"], check=True)
    binaries = probe / "target" / "release"
    baseline = (binaries / "baseline").stat().st_size
    stores = {}
    with tempfile.TemporaryDirectory(dir=args.state_parent, prefix="store-choice-") as work:
        for store, binary in (("redb", "with_redb"), ("sqlite", "with_sqlite")):
            size = (binaries / binary).stat().st_size
            stores[store] = {"binary_bytes": size, "over_baseline_bytes": size - baseline, "batches": {}}
            for batch, total in ((1, 2000), (64, 64 * 1000)):
                runs = []
                for _ in range(args.repeats):
                    before = load_average()
                    out = subprocess.run([binaries / binary, str(batch), str(total), f"{work}/probe.{store}"],
                                         check=True, capture_output=True, text=True).stdout
                    runs.append({**json.loads(out), "load_average_before": before})
                stores[store]["batches"][str(batch)] = {
                    "runs": runs,
                    "median_transactions_per_second": median_of(runs, "transactions_per_second"),
                    "median_records_per_second": median_of(runs, "records_per_second"),
                }
    results["store_choice"] = {"baseline_bytes": baseline, "stores": stores}

OUT.mkdir(exist_ok=True)
(OUT / "meter.json").write_text(json.dumps(results, indent=2) + "\n")

t, l, m, f = results["throughput"], results["latency"], results["memory"], results["fsync"]
loads = [run["load_average_before"]
         for key in ("throughput", "throughput_without_ids", "throughput_batched", "latency", "memory")
         for run in results[key]["runs"]]
commits_per_second = statistics.median(run["commits"] / run["seconds"] for run in t["runs"])
lines = [
    f"{args.repeats} runs of each on {os.cpu_count()} cores (median shown; load average before the runs "
    f"{min(loads):.2f} to {max(loads):.2f}), a fresh sidecar and state directory each, "
    f"{args.connections} keep-alive connections from `meter-load` over loopback.",
    "",
    "| measurement | result | goal |",
    "| --- | ---: | ---: |",
    f"| throughput, {args.connections} clients, single-record reports with ids | "
    f"{t['median_per_second']:,.0f} reports/s | >= 50,000/s |",
    f"| the same without ids | {results['throughput_without_ids']['median_per_second']:,.0f} reports/s | |",
    f"| throughput, {args.connections} clients, {args.batch} records per request with ids | "
    f"{results['throughput_batched']['median_per_second']:,.0f} reports/s | |",
    f"| latency at {args.rate:,}/s, open loop: p50 / p90 / p99 / max | "
    f"{l['median_ms']['p50']:.2f} / {l['median_ms']['p90']:.2f} / {l['median_ms']['p99']:.2f} / "
    f"{l['median_ms']['max']:.1f} ms | p99 <= 5 ms |",
    f"| peak RSS after {args.count:,} reports | {m['median_peak_rss_kib'] / 1024:.1f} MiB "
    f"(max {m['max_peak_rss_kib'] / 1024:.1f}) | <= 16 MiB |",
    f"| group commit under the throughput load | {t['median_changes_per_commit']:.1f} reports per commit, "
    f"{commits_per_second:,.0f} commits/s | |",
    f"| the disk: write + fsync of a small file | {f['median_per_second']:,.0f} fsyncs/s | |",
    f"| acknowledged reports per fsync the disk allows | {t['median_per_second'] / f['median_per_second']:.1f} | |",
    f"| sidecar binary (release) | {results['binary_bytes']:,} bytes | |",
]
if "state" in results:
    state = results["state"]
    lines.append(
        f"| the state under ids: 1,000 reports/s with unique ids for {state['windows']} windows of "
        f"{state['id_window_s']} s | {state['bytes_per_id']:.1f} bytes per id while the first window fills; "
        f"at most {state['max_state_bytes'] / 2**20:.1f} MiB, {state['final_state_bytes'] / 2**20:.1f} MiB at the "
        f"end, after {int(state['ids']):,} ids | <= 32 bytes per id |")
if "store_choice" in results:
    choice = results["store_choice"]
    lines += [
        "",
        f"The store, on the same disk (`bench/store-choice`; empty program {choice['baseline_bytes']:,} bytes):",
        "",
        "| store | binary size over an empty program | batch 1: transactions/s | batch 64: transactions/s | "
        "batch 64: records/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, store in choice["stores"].items():
        one, many = store["batches"]["1"], store["batches"]["64"]
        lines.append(f"| {'SQLite (bundled)' if name == 'sqlite' else name} | +{store['over_baseline_bytes']:,} bytes "
                     f"| {one['median_transactions_per_second']:,.0f} | {many['median_transactions_per_second']:,.0f} "
                     f"| {many['median_records_per_second']:,.0f} |")
report = "\n".join(lines) + "\n"
(OUT / "meter.md").write_text(report)
print(report)
