"""Checks a rehearsal's JSON report (read from stdin) against what a scenario must show; used by scripts/test.

    python check_report.py passes        # the outcome is the expected one and every invariant held
    python check_report.py shows-gap     # the expected outcome, and the report shows the private side going dark
"""

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
    elif mode == "shows-gap":
        if r["invariants_held"] or r["private_dark_ms"] == 0:
            problems.append("the report no longer shows the private side going dark: update the scenario's expectation")
    else:
        problems.append(f"unknown mode {mode}")
    name = r["scenario"]
    if problems:
        print(f"rehearsal {name}: FAIL: " + "; ".join(problems))
        return 1
    print(f"rehearsal {name}: ok ({mode}; outcome {r['outcome']}, private dark {r['private_dark_ms']} ms, "
          f"flip skew {r['flip_skew_ms']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
