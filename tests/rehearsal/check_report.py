"""Checks a rehearsal's JSON report (read from stdin) against what a scenario must show; used by scripts/test.

    python check_report.py passes        # the outcome is the expected one and every invariant held
"""

# Follow mode: the private weights must equal the public ones within a second of each public change.
MAX_WEIGHT_LAG_MS = 1000

import json
import sys


def main():
    mode = sys.argv[1]
    r = json.load(sys.stdin)
    problems = []
    if r["outcome"] != r["expected_outcome"]:
        problems.append(f"outcome {r['outcome']}, expected {r['expected_outcome']}")
    if mode == "passes":
        if not r["invariants_held"]:
            problems.append(f"invariants broken: {r['invariants']}")
        if r["private_dark_ms"] != 0:
            problems.append(f"private side dark for {r['private_dark_ms']} ms")
        if r["failed_requests"]["public"] == 0 and r["failed_requests"]["private"] != 0:
            problems.append(f"{r['failed_requests']['private']} private requests failed while no public one did")
        if r["max_weight_lag_ms"] > MAX_WEIGHT_LAG_MS:
            problems.append(f"private weights lagged the public ones by {r['max_weight_lag_ms']} ms")
    else:
        problems.append(f"unknown mode {mode}")
    name = r["scenario"]
    if problems:
        print(f"rehearsal {name}: FAIL: " + "; ".join(problems))
        return 1
    print(f"rehearsal {name}: ok ({mode}; outcome {r['outcome']}, private dark {r['private_dark_ms']} ms, "
          f"flip skew {r['flip_skew_ms']} ms, max weight lag {r['max_weight_lag_ms']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
