"""Checks a rehearsal's JSON report (read from stdin) against what a scenario must show; used by scripts/test.

    python check_report.py passes        # the outcome is the expected one and every invariant held
    python check_report.py untimed       # the same without the bars on time (a run under emulation, whose
                                         # times are not figures: qemu-user runs each hook many times slower)
    python check_report.py measured      # a fleet report: print what it measured per deployment and function
"""

# Follow mode: the private weights must equal the public ones within a second of each public change.
MAX_WEIGHT_LAG_MS = 1000

import json
import sys

import observe


def main():
    mode = sys.argv[1]
    r = json.load(sys.stdin)
    if mode == "measured":
        e = r["elb"]
        print(f"fleet: {r['outcome']} ({'passes' if r['passed'] else 'does not pass'}); our ELB Describe calls "
              f"{e['total']['describe_per_s']}/s, peak {e['total']['describe_peak_1s']} in 1 s, "
              f"{e['total']['throttled']} throttled; neighbour throttled {r['neighbour_throttles']} times; "
              f"worst weight lag {r['max_weight_lag_ms']} ms")
        for d in r["deployments_report"]:
            print(f"  {d['binding']} {d['config']}: {d['outcome']}, lag {d['max_weight_lag_ms']} ms, "
                  f"dark {d['private_dark_ms']} ms, invariants {'held' if d['invariants_held'] else 'BROKEN'}")
        for n, v in e["functions"].items():
            print(f"  {n:<22} {v['describe_per_s']:>6}/s  peak {v['describe_peak_1s']:>3}  throttled {v['throttled']}")
        return 0
    problems = []
    if r["outcome"] != r["expected_outcome"]:
        problems.append(f"outcome {r['outcome']}, expected {r['expected_outcome']}")
    if mode in ("passes", "untimed"):
        timed = mode == "passes"
        if not r["invariants_held"]:
            problems.append(f"invariants broken: {r['invariants']}")
        if "I4_never_dark" in r.get("expected_broken", []):
            # A scenario that shows what a misconfiguration costs the private clients must show it.
            if not r["failed_requests"]["private"] or r["failed_requests"]["public"]:
                problems.append(f"expected private requests to fail and no public one: {r['failed_requests']}")
        else:
            if r["private_dark_ms"] != 0:
                problems.append(f"private side dark for {r['private_dark_ms']} ms")
            if r["failed_requests"]["public"] == 0 and r["failed_requests"]["private"] != 0:
                problems.append(f"{r['failed_requests']['private']} private requests failed while no public one did")
        if timed and r["max_weight_lag_ms"] > MAX_WEIGHT_LAG_MS:
            problems.append(f"private weights lagged the public ones by {r['max_weight_lag_ms']} ms")
        side_2 = r.get("side_2")
        if side_2:
            if side_2["failed_requests"] and not r["failed_requests"]["public"]:
                problems.append(f"{side_2['failed_requests']} requests failed on private side 2")
            if timed and side_2["majority_lag_ms"] > MAX_WEIGHT_LAG_MS:
                problems.append(f"private side 2 lagged the public majority by {side_2['majority_lag_ms']} ms")
        for hook, h in r.get("hooks", {}).items():
            problems.extend(observe.problems(hook, h))
        if r.get("neighbour_throttles"):
            problems.append(f"another client in the account was throttled {r['neighbour_throttles']} times")
    else:
        problems.append(f"unknown mode {mode}")
    name = r["scenario"]
    if problems:
        print(f"rehearsal {name}: FAIL: " + "; ".join(problems))
        return 1
    print(f"rehearsal {name}: ok ({mode}; outcome {r['outcome']}, private dark {r['private_dark_ms']} ms, "
          f"flip skew {r.get('flip_skew_ms')} ms, max weight lag {r['max_weight_lag_ms']} ms, "
          f"ELB Describe {r['elb']['total']['describe_per_s']}/s, peak {r['elb']['total']['describe_peak_1s']} in 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
