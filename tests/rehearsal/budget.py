"""The account's ELB budget, seen from the emulated endpoint: every ELB call of every caller with its time and
whether ELB's buckets refused it. Reports, per function (the reconciler's follow-mode attempts apart, as
`follower`), per mutating or reading kind, and for the neighbour: calls per second averaged over the run and in
the busiest one-second window, and throttles suffered."""

import standin


def peak_1s(times):
    """The most calls in any one-second window (a sliding window over sorted call times)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] < t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def elb_report(world, t0, t1, name_of):
    """`name_of(caller, token)` names the function behind a call, or None for calls made on the customer's behalf
    (ECS, CodeDeploy), which ELB does not charge to the account's buckets."""
    span = max(t1 - t0, 1e-9)
    by = {}
    for t, caller, op, token, throttled in world.elb_calls:
        if not t0 <= t <= t1:
            continue
        name = name_of(caller, token)
        if name is None:
            continue
        kind = standin.elb_bucket(op)
        row = by.setdefault(name, {"describe": [], "other": [], "throttled": 0, "ops": {}})
        row["describe" if kind == "describe" else "other"].append(t)
        row["ops"][op] = row["ops"].get(op, 0) + 1
        row["throttled"] += throttled
    attempts = {}
    for t, caller, op, token, throttled in world.elb_calls:
        if t0 <= t <= t1 and name_of(caller, token) == "follower" and op.startswith("Describe"):
            a = attempts.setdefault(token, [t, t, 0])
            a[1], a[2] = t, a[2] + 1
    out = {}
    for name, row in sorted(by.items()):
        out[name] = {
            "describe_calls": len(row["describe"]),
            "describe_per_s": round(len(row["describe"]) / span, 3),
            "describe_peak_1s": peak_1s(row["describe"]),
            "mutating_calls": len(row["other"]),
            "throttled": row["throttled"],
            "operations": dict(sorted(row["ops"].items())),
        }
    ours = [t for n, row in by.items() if n != "neighbour" for t in row["describe"]]
    # Which seconds of the run ELB throttled someone in, and how often: where the budget ran out.
    throttled_in = {}
    for t, caller, op, token, throttled in world.elb_calls:
        if throttled and t0 <= t <= t1 and name_of(caller, token) is not None:
            second = int(t - t0)
            throttled_in[second] = throttled_in.get(second, 0) + 1
    # Around each throttled second: every caller's Describe calls per second, to see who drained the bucket.
    around = {}
    for sec in throttled_in:
        for k in range(max(0, sec - 4), sec + 1):
            around.setdefault(str(k), {})
    for t, caller, op, token, throttled in world.elb_calls:
        name = name_of(caller, token)
        if name is None or not t0 <= t <= t1 or not op.startswith("Describe"):
            continue
        row = around.get(str(int(t - t0)))
        if row is not None:
            # Follower attempts apart: which deployment's follower it was.
            key = f"{name}:{(token or '')[:8]}" if name == "follower" else name
            row[key] = row.get(key, 0) + 1
            ops = row.setdefault("ops", {})
            ops[f"{key}:{op}"] = ops.get(f"{key}:{op}", 0) + 1
    total = {
        "describe_calls": len(ours),
        "describe_per_s": round(len(ours) / span, 3),
        "describe_peak_1s": peak_1s(ours),
        "throttled": sum(row["throttled"] for n, row in by.items() if n != "neighbour"),
        # Writes draw on the registration and mutating buckets, the tightest the fleet touches (Modify*: 3 a second).
        "throttled_writes": sum(1 for t, caller, op, token, throttled in world.elb_calls
                                if throttled and t0 <= t <= t1 and not op.startswith("Describe")
                                and name_of(caller, token) not in (None, "neighbour")),
        "seconds": round(span, 1),
        "throttled_in_second": {str(k): v for k, v in sorted(throttled_in.items())},
        "describes_before_throttles": dict(sorted(around.items(), key=lambda kv: int(kv[0]))),
    }
    return {"functions": out, "total": total,
            "follower_attempts": [{"describe_calls": n, "seconds": round(b - a, 1), "first_call_s": round(a - t0, 2)}
                                  for a, b, n in attempts.values()],
            "buckets": {k: {"capacity": c, "refill_per_s": r} for k, (c, r) in world.buckets.figures.items()}}
