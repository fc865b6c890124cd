"""Start-up cost of `check` for two builds of the gate, interleaved against one emulator: did
a change (License Manager, say) make the gate slower to start or bigger?

Usage: compare_builds.py BEFORE_BINARY AFTER_BINARY [RUNS]

Prints sizes, median wall time and median peak RSS of each, and the change in percent.
"""

import os
import statistics
import sys

from common import Emulator, aws_environment, peak_rss_kib, wall_time

before, after = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 30
emulator = Emulator()
environment = aws_environment(emulator)
builds = {"before": before, "after": after}
samples = {name: {"wall_ms": [], "rss_kib": []} for name in builds}
try:
    for round_number in range(runs + 1):
        order = list(builds) if round_number % 2 == 0 else list(reversed(builds))
        for name in order:
            argv = [builds[name], "check"]
            code, wall = wall_time(argv, environment)
            rss_code, rss = peak_rss_kib(argv, environment)
            if code != 0 or rss_code != 0:
                sys.exit(f"{name} ({builds[name]}) exited {code or rss_code}")
            if round_number > 0:  # round 0 warms caches
                samples[name]["wall_ms"].append(wall * 1000)
                samples[name]["rss_kib"].append(rss)
finally:
    emulator.close()


def change(new, old):
    return f"{(new - old) / old * 100:+.1f}%"


size = {name: os.path.getsize(path) for name, path in builds.items()}
wall = {name: statistics.median(s["wall_ms"]) for name, s in samples.items()}
rss = {name: statistics.median(s["rss_kib"]) for name, s in samples.items()}
print(f"| build | size (bytes) | check wall, median of {runs} (ms) | peak RSS, median (MiB) |")
print("| --- | --- | --- | --- |")
for name in builds:
    print(f"| {name} | {size[name]:,} | {wall[name]:.1f} | {rss[name] / 1024:.1f} |")
print(f"| change | {change(size['after'], size['before'])} | {change(wall['after'], wall['before'])} "
      f"| {change(rss['after'], rss['before'])} |")
