"""The fault matrix: every scenario under every fault profile (throttling, 5xx, dropped connections) and under a
crash at every AWS call of each function, each rehearsal in its own process on its own loopback lane."""

import json
import os
import subprocess
import sys
import threading

from scenarios import SCENARIOS

REHEARSE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rehearse.py")


CRASH = "crash-every-step"
PROFILES = {"none": "", "throttle-30%": "*=throttle:0.3", "5xx-10%": "*=5xx:0.1", "resets-5%": "*=reset:0.05",
            CRASH: None}
# Long faults: an outage of ELB's reads, of DynamoDB, of CodeDeploy's status reports, for tens of seconds to
# minutes, as real throttling and outages last (real seconds, with the template's function timeouts). Each applies
# to one scenario: (scenario, faults). A function may wait an outage out or fail its deployment; the cell holds it
# to never dark, every invocation reported exactly once, every private route where the public one is at the end.
LONG = {
    "elb-reads-out-30s@gate": ("happy", "elbv2.Describe*=throttle:1@BeforeAllowTraffic+30"),
    "elb-reads-out-120s@gate": ("happy", "elbv2.Describe*=throttle:1@BeforeAllowTraffic+120"),
    "elb-reads-out-30s@steps": ("canary", "elbv2.Describe*=throttle:1@AllowTraffic+30"),
    "elb-reads-out-120s@steps": ("canary", "elbv2.Describe*=throttle:1@AllowTraffic+120"),
    "dynamodb-out-60s": ("happy", "dynamodb=5xx:1@AfterInstall+60"),
    "reports-out-60s": ("happy", "codedeploy.PutLifecycleEventHookExecutionStatus=5xx:1@AfterInstall+60"),
}
# (scenario, profile, functions to crash: None for every function the scenario runs)
QUICK_MATRIX = [("happy", "throttle-30%", None), ("unhealthy-green", "throttle-30%", None),
                ("alarm-rollback", "5xx-10%", None), ("alarm-rollback", "throttle-30%", None),
                ("linear", "resets-5%", None), ("two-sides", "throttle-30%", None),
                ("happy", CRASH, ["after-allow-traffic", "follower"])]
# In the quick matrix the follower crashes at its first calls only: the lease, its first reads, the reroute read and
# mirrored (a crash after every later call is the full matrix's).
QUICK_FOLLOWER_CALLS = 12


# A crash cell runs hundreds of rehearsals: CodeDeploy invokes their hooks at once (the hook latency the other
# cells model would add 6 s to each). The follower and AfterAllowTraffic then race for the flip, which every crash
# point must survive too.
CRASH_HOOK_LATENCY_S = 0.0


def run_one(scenario, tasks, faults="", crash=None, hook_latency=None, long=False):
    """One rehearsal in its own process (on the lowest loopback lane free then); its JSON report, or a failed one
    that carries the process's stderr. `long`: with the template's function timeouts."""
    args = [sys.executable, REHEARSE, "--scenario", scenario, "--json", "--faults", faults, "--tasks", str(tasks)]
    if long:
        args.append("--template-timeouts")
    if hook_latency is not None:
        args += ["--hook-latency", str(hook_latency)]
    if crash:
        args += ["--crash", crash]
    p = subprocess.run(args, capture_output=True, timeout=3600 if long else 900)
    try:
        return json.loads(p.stdout)
    except ValueError:
        return {"outcome": "failed", "expected_outcome": SCENARIOS[scenario]["expected"], "invariants_held": False,
                "private_dark_ms": None, "failed_requests": {}, "faults_injected": {}, "hooks": {},
                "reconciler": {}, "messages": [p.stderr.decode(errors="replace")[-500:]]}


def cell_problems(r, may_roll_back=False):
    """Why a cell's run fails the matrix: the outcome it would have had without faults (or, under an outage, a
    rollback), private dark time 0, no private request failed where no public one did, every invariant held
    (DynamoDB consistent with ELB too)."""
    fr = r.get("failed_requests", {})
    out = []
    if r["outcome"] != r["expected_outcome"] and not (may_roll_back and r["outcome"] == "rolled_back"):
        out.append(f"outcome {r['outcome']} (expected {r['expected_outcome']})")
    if not r["invariants_held"]:
        out.append("broken: " + ", ".join(k for k, v in r.get("invariants", {}).items() if not v))
    if r["private_dark_ms"] != 0:
        out.append(f"private dark {r['private_dark_ms']} ms")
    if fr.get("private", 0) and not fr.get("public", 0):
        out.append(f"{fr['private']} private requests failed")
    side_2 = r.get("side_2") or {}
    if side_2.get("failed_requests") and not fr.get("public", 0):
        out.append(f"{side_2['failed_requests']} requests failed on private side 2")
    return out + [m for m in r.get("messages", []) if out]


class Jobs:
    """At most `n` rehearsals at once; each claims a loopback lane of its own (`procs.claim_lane`)."""

    def __init__(self, n):
        self.slots = threading.BoundedSemaphore(n)

    def run(self, *args, **kwargs):
        with self.slots:
            return run_one(*args, **kwargs)


# The follower repeats one cycle (read the public route, mirror it, renew its lease) for the whole deployment,
# about 140 calls in a linear rehearsal: every call of its first cycles, then every 8th.
FOLLOWER_EVERY_STEP_UNTIL = 24
FOLLOWER_STRIDE = 8


def crash_cell(scenario, tasks, functions, jobs, pool, follower_calls=None):
    """Crash at every step: a clean run counts the AWS calls each function's first attempt makes; then one
    rehearsal per function and per n kills that attempt right after its n-th call (n = 1 … count). The cell passes
    when every one of those rehearsals does."""
    clean = jobs.run(scenario, tasks, hook_latency=CRASH_HOOK_LATENCY_S)
    if SCENARIOS[scenario].get("between"):
        plan = [("reconciler", clean.get("reconciler", {}).get("first_attempt_calls", 0))]
    else:
        plan = [(h["function"], h["first_attempt_calls"]) for h in clean.get("hooks", {}).values()]
        if SCENARIOS[scenario].get("crash_follower"):
            plan.append(("follower", clean.get("reconciler", {}).get("first_follower_attempt_calls", 0)))
    plan = [(f, n if f != "follower" or follower_calls is None else min(n, follower_calls))
            for f, n in plan if functions is None or f in functions]
    points = [f"{f}:{n}" for f, count in plan for n in range(1, count + 1)
              if f != "follower" or n <= FOLLOWER_EVERY_STEP_UNTIL or n % FOLLOWER_STRIDE == 0]
    reports = list(pool.map(lambda point: jobs.run(scenario, tasks, crash=point, hook_latency=CRASH_HOOK_LATENCY_S),
                            points))
    failures, fired, broke = [], 0, False
    for point, r in zip(points, reports):
        fired += bool((r.get("crash") or {}).get("fired"))
        problems = cell_problems(r)
        if problems:
            failures.append(f"{point} ({(r.get('crash') or {}).get('call')}): {'; '.join(problems)[:300]}")
            broke = broke or not r["invariants_held"]
    clean_problems = cell_problems(clean)
    if clean_problems:
        failures.insert(0, "without a crash: " + "; ".join(clean_problems)[:300])
    return {"scenario": scenario, "faults": CRASH, "outcome": clean["outcome"], "expected": clean["expected_outcome"],
            "invariants_held": not broke and clean["invariants_held"], "crash_points": len(points),
            "crashes_fired": fired, "crash_plan": dict(plan), "passed": not failures, "messages": failures}


def matrix(args):
    """Runs scenarios under fault profiles, each rehearsal in its own process, and checks every cell (see
    cell_problems). `--jobs` runs that many rehearsals side by side, each on a loopback lane of its own."""
    from concurrent.futures import ThreadPoolExecutor

    # A scenario that shows a misconfiguration's cost (`"matrix": False`) is no test of recovery from faults.
    cells = QUICK_MATRIX if args.quick else [(s, p, None) for s, spec in SCENARIOS.items() if spec.get("matrix", True)
                                            for p in PROFILES] + [(s, name, None) for name, (s, _) in LONG.items()]
    if args.only:
        cells = [c for c in cells if c[0] in args.only.split(",")]
    jobs = Jobs(args.jobs)
    def fault_cell(scenario, profile):
        long = profile in LONG
        r = jobs.run(scenario, args.tasks, LONG[profile][1] if long else PROFILES[profile], long=long)
        problems = cell_problems(r, may_roll_back=long)
        return {"scenario": scenario, "faults": profile, "outcome": r["outcome"], "expected": r["expected_outcome"],
                "invariants_held": r["invariants_held"], "private_dark_ms": r["private_dark_ms"],
                "failed_requests": r.get("failed_requests", {}),
                "faults_injected": sum(r.get("faults_injected", {}).values()), "passed": not problems,
                "hooks": {h: {"verdict": v.get("verdict"), "duration_ms": v.get("duration_ms")}
                          for h, v in r.get("hooks", {}).items()} if long else None,
                "messages": problems}

    def show(row):
        detail = (f"{row['crashes_fired']}/{row['crash_points']} crash points" if row["faults"] == CRASH
                  else f"injected {row['faults_injected']:>4}")
        print(f"{row['scenario']:<16} {row['faults']:<17} {row['outcome']:<12} {detail:<22} "
              f"{'PASS' if row['passed'] else 'FAIL'}", file=sys.stderr, flush=True)
        # A long run's failures are read while it still runs, not only in the summary at its end.
        for m in row["messages"] if not row["passed"] else []:
            print(f"    {m[:600]}", file=sys.stderr, flush=True)

    rows = [None] * len(cells)
    with ThreadPoolExecutor(args.jobs) as pool:
        # Fault cells are single rehearsals: queue them all. Crash cells fan out into the same pool from here.
        pending = {}
        for i, (scenario, profile, _) in enumerate(cells):
            if profile != CRASH:
                pending[i] = pool.submit(fault_cell, scenario, profile)
                pending[i].add_done_callback(lambda f: show(f.result()))
        for i, (scenario, profile, functions) in enumerate(cells):
            if profile == CRASH:
                rows[i] = crash_cell(scenario, args.tasks, functions, jobs, pool,
                                     QUICK_FOLLOWER_CALLS if args.quick else None)
                show(rows[i])
        for i, f in pending.items():
            rows[i] = f.result()
    failed = sum(1 for r in rows if not r["passed"])
    if args.json:
        print(json.dumps({"matrix": rows}, indent=2))
    else:
        for r in rows:
            if not r["passed"]:
                print(f"FAIL {r['scenario']} under {r['faults']}: {' | '.join(r['messages'])[:1500]}")
        print(f"matrix: {len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0

