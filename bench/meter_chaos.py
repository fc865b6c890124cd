"""Chaos evidence for the metering sidecar: kill -9 under load while MeterUsage misbehaves.

Usage: meter_chaos.py [--rounds N] [--seed S] [--clients C] [--outage-rate P] [--out FILE]

Runs the release `entitlement-gate meter` (2 s periods) against the release emulator, with C
client threads that POST single reports and small arrays continuously, every report with a
unique `id` and a quantity that is whole or has up to six decimal places (`0.25`, `0.000001`,
`2.5e-3`). Each round sets other random MeterUsage faults on the emulator (throttling, 500s,
dropped connections, answers lost after the usage was recorded, answers slower than the 1 s
attempt timeout) and lets the load run 0.2 to 2.5 s; an outage round (--outage-rate, 5% by
default) instead loses every answer for 0.5 to 2 periods (the calls are recorded), then fails
every call for 6 to 7 periods, past the carry time of the hours that closed meanwhile (5.5
periods after their start). Then it kill -9s the sidecar and restarts it on the same
state directory (one round in five kills it a second time within 300 ms of its start, during
recovery or the start-up DryRun). Clients resend every request whose 200 they did not get,
unchanged, until it gets one: at-least-once delivery, and the ids make it exactly-once.

The sidecar remembers an id for its id window (the carry window when shorter than an hour: 11 s
here; at most twice that), so a resend must come within 11 s of the first send. The clients retry
every 20 ms and the sidecar restarts at once, so resends come within the restart time; the run
measures the oldest resend and fails if it was later.

Before every kill the sidecar's own ledger must balance for every dimension (acknowledged = billed
+ refused + in doubt + unsent + carried fraction, exactly, from `/v1/status`). At the end: clear
the faults, stop the clients (each first gets its last request acknowledged), SIGTERM the sidecar
and require exit 0, or 9 exactly when its ledger holds units in doubt (an outage's lost answers);
then, per dimension, the sidecar must have acknowledged exactly the clients' units, and the
emulator's ledger must hold exactly the floor of them (the fraction under one unit left unbilled
and logged, never more), no (resource, dimension, period) twice, and no refused duplicate or
idempotency conflict. Prints the result and writes bench/out/meter-chaos.json
(exit 1 if an invariant broke; then the sidecar log, the ledger, every acknowledged request and
the state directory are kept in bench/out/meter-chaos-failure/ for the reproduction).
"""

import argparse
import datetime
import http.client
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from decimal import Decimal

from common import OUT, MeteringEmulator, Sidecar, free_port, meter_environment

DIMENSIONS = ("requests", "users")
PERIOD_S = 2
# The id window: an hour, or the carry window (5.5 periods) if shorter (src/cli/args.rs).
ID_WINDOW_S = min(3600, 5.5 * PERIOD_S)
# Quantities as the clients write them: the JSON number's text, valued exactly with Decimal.
QUANTITIES = ("0", "1", "1", "2", "3", "5", "8", "13", "100", "0.25", "0.1", "0.2", "1.5",
              "0.000001", "2.5e-3", "0.999999", "7.000001", "12.5")

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--rounds", type=int, default=200)
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--clients", type=int, default=8)
parser.add_argument("--outage-rate", type=float, default=0.05,
                    help="share of rounds with a MeterUsage outage of about 6 periods")
parser.add_argument("--out", default=str(OUT / "meter-chaos.json"))
args = parser.parse_args()


def report_json(report):
    """A report as JSON with its quantity written as the number text chosen, never a float."""
    fields = dict(report)
    quantity = fields.pop("quantity")
    text = json.dumps(fields)
    return text[:-1] + f', "quantity": {quantity}}}'


class Client(threading.Thread):
    """Posts reports in a closed loop; a request without a 200 is resent, unchanged, until it
    gets one."""

    def __init__(self, index, port, stopping):
        super().__init__(name=f"client-{index}", daemon=True)
        self.index = index
        self.port = port
        self.stopping = stopping
        self.rng = random.Random(f"{args.seed}/client/{index}")
        self.next_id = 0
        self.acknowledged = []  # (first send, acknowledged, as epoch seconds; attempts, reports)
        self.units = dict.fromkeys(DIMENSIONS, Decimal(0))
        self.reports = 0
        self.already_counted = 0  # reports a resend found counted before (their first answer was lost)
        self.attempts = 0
        self.resends = 0
        self.max_resend_age = 0.0
        self.failures = {}  # what a failed attempt saw: connection errors and statuses
        self.refused = []  # 4xx answers: the harness sent something invalid

    def report(self):
        self.next_id += 1
        quantity = self.rng.choice(QUANTITIES + (str(self.rng.randrange(1000)),))
        report = {
            "dimension": self.rng.choice(DIMENSIONS),
            "quantity": quantity,
            "id": f"chaos-{args.seed}-{self.index}-{self.next_id}",
        }
        draw = self.rng.random()
        if draw < 0.3:
            report["tags"] = {"team": self.rng.choice("abc")}
        elif draw < 0.4:
            report["tags"] = {"team": self.rng.choice("abc"), "env": "prod"}
        return report


    def run(self):
        connection = None
        while not self.stopping.is_set():
            count = 1 if self.rng.random() < 0.6 else self.rng.randint(2, 8)
            reports = [self.report() for _ in range(count)]
            if count == 1 and self.rng.random() < 0.5:
                body = report_json(reports[0])
            else:
                body = "[" + ", ".join(report_json(report) for report in reports) + "]"
            first, first_wall = time.monotonic(), time.time()
            attempt = 0
            while True:
                attempt += 1
                self.attempts += 1
                if attempt > 1:
                    self.resends += 1
                    self.max_resend_age = max(self.max_resend_age, time.monotonic() - first)
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    connection.request("POST", "/v1/usage", body=body,
                                       headers={"content-type": "application/json"})
                    response = connection.getresponse()
                    answer = response.read()
                except (OSError, http.client.HTTPException) as error:
                    if connection is not None:
                        connection.close()
                    connection = None
                    name = type(error).__name__
                    self.failures[name] = self.failures.get(name, 0) + 1
                    time.sleep(0.02)
                    continue
                if response.status == 200:
                    answer = json.loads(answer)
                    assert answer["accepted"] == count, answer
                    self.already_counted += answer["duplicates"]
                    self.acknowledged.append((first_wall, time.time(), attempt, reports))
                    self.reports += count
                    for report in reports:
                        self.units[report["dimension"]] += Decimal(report["quantity"])
                    break
                key = f"HTTP {response.status}"
                self.failures[key] = self.failures.get(key, 0) + 1
                if 400 <= response.status < 500:
                    self.refused.append((response.status, answer.decode(errors="replace"), body))
                    break
                # 503 while starting (or stopping), 500 if the state could not be written.
                time.sleep(0.02)
        if connection is not None:
            connection.close()


def draw_faults(rng):
    """This round's random MeterUsage faults (every call draws from them)."""
    if rng.random() < 0.1:
        return {}
    return {"operations": ["meter-usage"], "random": {
        "seed": rng.randrange(2**32),
        "throttle": round(rng.uniform(0, 0.3), 3),
        "fail": round(rng.uniform(0, 0.2), 3),
        "drop": round(rng.uniform(0, 0.1), 3),
        "loseResponse": round(rng.uniform(0, 0.25), 3),
        "slow": round(rng.uniform(0, 0.2), 3),
        # Slower than the 1 s attempt timeout is abandoned, and may be recorded anyway.
        "slowMs": rng.choice((100, 400, 1500, 3000)),
    }}


# An outage: first the answers are lost (the calls get through and are recorded: a network that
# drops the way back), then every call fails, past the carry time of the hours that closed
# meanwhile (5.5 periods after an hour starts); then it is over.
LOST_ANSWERS = {"operations": ["meter-usage"], "random": {"seed": 1, "loseResponse": 1.0}}
FAILING = {"operations": ["meter-usage"], "error": "InternalServiceErrorException"}


def quantity(text):
    value = Decimal(text)
    if value != value.to_integral_value():
        raise ValueError(f"a fractional quantity {text} in the ledger")
    return int(value)


def sidecar_ledger(sidecar):
    """The sidecar's ledger per dimension from /v1/status, as exact Decimals."""
    with urllib.request.urlopen(sidecar.url + "/v1/status", timeout=10) as response:
        status = json.loads(response.read())
    return {name: {part: (value if part == "balances" else Decimal(value))
                   for part, value in state["ledger"].items()}
            for name, state in status["dimensions"].items()}


started = time.monotonic()
emulator = MeteringEmulator(period=f"{PERIOD_S}s", dimensions=DIMENSIONS)
work = tempfile.TemporaryDirectory(prefix="meter-chaos-")
state_dir = f"{work.name}/state"
log_path = f"{work.name}/sidecar.log"
port = free_port()
environment = meter_environment(
    emulator, state_dir, port, period=f"{PERIOD_S}s",
    ENTITLEMENT_GATE_SHUTDOWN_GRACE="60s",
    ENTITLEMENT_GATE_ATTEMPT_TIMEOUT="1s",
    ENTITLEMENT_GATE_RETRY_BASE="100ms",
    ENTITLEMENT_GATE_RETRY_CAP="1s",
)
problems = []  # crashes, hangs, refusals: each breaks the run
unbalanced = []  # rounds whose sidecar ledger did not balance
ready_s = []
rounds_log = []  # per round: when it started, its faults, when the sidecar was killed
kills = early_kills = outages = 0


def start():
    return Sidecar(environment, port, log_path)


sidecar = start()
ready_s.append(sidecar.wait_ready())
stopping = threading.Event()
clients = [Client(index, port, stopping) for index in range(args.clients)]
for client in clients:
    client.start()

for round_number in range(args.rounds):
    rng = random.Random(f"{args.seed}/round/{round_number}")
    outage = rng.random() < args.outage_rate
    outages += outage
    if outage:
        lost_s, failing_s = rng.uniform(0.5, 2) * PERIOD_S, rng.uniform(6, 7) * PERIOD_S
        faults = {"lost answers for s": round(lost_s, 2), "then failing for s": round(failing_s, 2)}
    else:
        faults = draw_faults(rng)
        load_s = rng.uniform(0.2, 2.5)
    rounds_log.append({"round": round_number, "started": round(time.time(), 3), "outage": outage,
                       "faults": faults})
    early_kill = rng.random() < 0.2
    early_kill_s = rng.uniform(0, 0.3)
    if outage:
        emulator.set_faults(LOST_ANSWERS)
        time.sleep(lost_s)
        emulator.set_faults(FAILING)
        time.sleep(failing_s)
        emulator.set_faults({})  # over: the restart's DryRun need not wait it out
    else:
        emulator.set_faults(faults)
        time.sleep(load_s)
    if sidecar.process.poll() is not None:
        problems.append(f"round {round_number}: the sidecar exited {sidecar.process.returncode} by itself")
    else:
        try:
            balances = {name: counted["balances"] for name, counted in sidecar_ledger(sidecar).items()}
        except OSError as error:
            balances = {"unreadable": str(error)}
        rounds_log[-1]["ledger_balances"] = balances
        if not all(value is True for value in balances.values()):
            unbalanced.append({"round": round_number, "balances": balances})
    sidecar.kill()
    kills += 1
    rounds_log[-1]["killed"] = round(time.time(), 3)
    sidecar = start()
    if early_kill:
        time.sleep(early_kill_s)
        sidecar.kill()
        kills += 1
        early_kills += 1
        sidecar = start()
    try:
        ready_s.append(sidecar.wait_ready())
    except RuntimeError as error:
        problems.append(f"round {round_number} (faults {json.dumps(faults)}): {error}")
        break
    if (round_number + 1) % 10 == 0:
        done = sum(client.reports for client in clients)
        print(f"round {round_number + 1}/{args.rounds}: {done} reports acknowledged, "
              f"{time.monotonic() - started:.0f} s", flush=True)

# The end: no faults, every client's last request acknowledged, then SIGTERM.
emulator.set_faults({})
stopping.set()
for client in clients:
    client.join(60)
    if client.is_alive():
        problems.append(f"{client.name} did not get its last request acknowledged within 60 s")
final_ledger = sidecar_ledger(sidecar) if sidecar.process.poll() is None else {}
stop_started = time.monotonic()
exit_code = sidecar.stop(timeout=120) if sidecar.process.poll() is None else sidecar.process.returncode
shutdown_s = time.monotonic() - stop_started
ledger = emulator.ledger()
stats = emulator.stats()
emulator.close()
elapsed = time.monotonic() - started

acknowledged = dict.fromkeys(DIMENSIONS, Decimal(0))
for client in clients:
    for dimension, units in client.units.items():
        acknowledged[dimension] += units
# Billed: the whole units of what was acknowledged; the fraction under one unit is not billed.
floor_acknowledged = {name: int(units // 1) for name, units in acknowledged.items()}
in_ledger = dict.fromkeys(DIMENSIONS, 0)
keys = {}
for record in ledger["records"]:
    in_ledger[record["dimension"]] = in_ledger.get(record["dimension"], 0) + quantity(record["quantity"])
    key = (record["resource"], record["dimension"], record["timestamp"])
    keys[key] = keys.get(key, 0) + 1
duplicate_keys = sum(count - 1 for count in keys.values() if count > 1)
difference = {name: in_ledger.get(name, 0) - floor_acknowledged.get(name, 0)
              for name in sorted(set(in_ledger) | set(acknowledged))}
sidecar_acknowledged = {name: final_ledger.get(name, {}).get("acknowledged") for name in DIMENSIONS}
in_doubt_units = sum(counted["inDoubt"] for counted in final_ledger.values())
log = open(log_path, errors="replace").read()
failures = {}
for client in clients:
    for name, count in client.failures.items():
        failures[name] = failures.get(name, 0) + count
refused = [refusal for client in clients for refusal in client.refused]
# Hours the sidecar carried into a later hour: was the hour recorded already (its answer lost)?
# Then its units are in the ledger twice.
carried = []
for line in log.splitlines():
    if "it is carried into the current hour" in line:
        fields = dict(field.split("=", 1) for field in line.split() if "=" in field and not field.startswith("error"))
        hour = int(datetime.datetime.fromisoformat(fields["hour"].replace("Z", "+00:00")).timestamp())
        recorded = [r for r in ledger["records"] if r["dimension"] == fields["dimension"] and r["timestamp"] == hour]
        carried.append({"dimension": fields["dimension"], "hour": fields["hour"], "quantity": quantity(fields["quantity"]),
                        "already_in_ledger": [{"quantity": r["quantity"], "received_at": r["receivedAt"]}
                                              for r in recorded]})
doubled = [c for c in carried if c["already_in_ledger"]]
doubled_units = {}
for c in doubled:
    doubled_units[c["dimension"]] = doubled_units.get(c["dimension"], 0) + c["quantity"]
max_resend_age = max(client.max_resend_age for client in clients)
window = ID_WINDOW_S
expected_exit = 9 if in_doubt_units > 0 else 0

invariants = {
    "reports were acknowledged in every dimension": all(units > 0 for units in acknowledged.values()),
    "ledger units equal the floor of the acknowledged units, per dimension": all(d == 0 for d in difference.values()),
    "the sidecar acknowledged exactly the clients' units, per dimension":
        all(sidecar_acknowledged[name] == acknowledged[name] for name in DIMENSIONS),
    "the sidecar's ledger balanced before every kill and at the end":
        not unbalanced and all(counted["balances"] is True for counted in final_ledger.values()),
    "one record per (resource, dimension, period)": duplicate_keys == 0,
    "no refused duplicate and no idempotency conflict": ledger["duplicatesRefused"] == 0 and ledger["conflicts"] == 0,
    "SIGTERM at the end exits 0, or 9 when units are in doubt": exit_code == expected_exit,
    "no crash, hang or refused request": not problems and not refused and "panicked" not in log,
    f"every resend within {window} s of the first send": max_resend_age < window,
}
result = {
    "rounds": args.rounds,
    "seed": args.seed,
    "clients": args.clients,
    "period_s": PERIOD_S,
    "kills": kills,
    "kills_within_300ms_of_start": early_kills,
    "outage_rounds": outages,
    "requests_acknowledged": sum(len(client.acknowledged) for client in clients),
    "reports_acknowledged": sum(client.reports for client in clients),
    "units_acknowledged": {name: str(units) for name, units in acknowledged.items()},
    "units_acknowledged_by_the_sidecar": {name: str(units) for name, units in sidecar_acknowledged.items()},
    "units_in_ledger": in_ledger,
    "final_sidecar_ledger": {name: {part: str(value) for part, value in counted.items()}
                             for name, counted in final_ledger.items()},
    "rounds_with_an_unbalanced_ledger": unbalanced[:5],
    "difference_per_dimension": difference,
    "ledger_records": len(ledger["records"]),
    "ledger_duplicate_keys": duplicate_keys,
    "idempotent_replays": ledger["idempotentReplays"],
    "duplicates_refused": ledger["duplicatesRefused"],
    "idempotency_conflicts": ledger["conflicts"],
    "meter_usage_calls": stats.get("operations", {}).get("MeterUsage", stats),
    "requests_resent": sum(client.resends for client in clients),
    "resent_reports_found_already_counted": sum(client.already_counted for client in clients),
    "failed_attempts": failures,
    "max_resend_age_s": round(max_resend_age, 3),
    "id_window_s": window,
    "ready_after_restart_s": {"median": round(statistics.median(ready_s), 3), "max": round(max(ready_s), 3)},
    "hours_carried": len(carried),
    "carried_hours_already_in_ledger": {
        "count": len(doubled),
        "units": doubled_units,
        "hours": doubled,
    },
    "difference_not_from_carried_hours": {name: difference[name] - doubled_units.get(name, 0)
                                          for name in difference},
    "final_exit_code": exit_code,
    "shutdown_s": round(shutdown_s, 2),
    "problems": problems + [f"HTTP {status}: {answer} for {body}" for status, answer, body in refused[:5]],
    "elapsed_s": round(elapsed, 1),
    "invariants": invariants,
    "ok": all(invariants.values()),
}
OUT.mkdir(exist_ok=True)
with open(args.out, "w") as out:
    out.write(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))

if not result["ok"]:
    kept = OUT / "meter-chaos-failure"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    shutil.copytree(state_dir, kept / "state", dirs_exist_ok=True)
    shutil.copy(log_path, kept / "sidecar.log")
    with open(kept / "rounds.jsonl", "w") as out:
        out.writelines(json.dumps(entry) + "\n" for entry in rounds_log)
    (kept / "ledger.json").write_text(json.dumps(ledger, indent=1) + "\n")
    with open(kept / "acknowledged.jsonl", "w") as out:
        for client in clients:
            for first, acked, attempts, reports in client.acknowledged:
                out.write(json.dumps({"client": client.index, "first_sent": round(first, 3),
                                      "acknowledged": round(acked, 3), "attempts": attempts,
                                      "reports": reports}) + "\n")
    print(f"broken: {[name for name, ok in invariants.items() if not ok]}; evidence in {kept}", file=sys.stderr)
work.cleanup()
sys.exit(0 if result["ok"] else 1)
