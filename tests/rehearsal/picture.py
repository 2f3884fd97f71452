"""A picture of a rehearsal: builds the timeline document that `bluegreen-mirror report --data` draws (the same
renderer draws a real deployment from its DynamoDB record; hooks/src/report.rs), and writes the page.

    scripts/rehearse --scenario canary --report canary.html

Weights come from every change of each side's production route as the endpoint applied it, requests from the
traffic probe (per version, and failures), hook spans from the timeline, marks for the flip, the follower's steps,
the private targets' health as each group's timing moves it, and every fault injected."""

import json
import os
import subprocess


def version(name):
    """blue or green, from a target group's rehearsal name (pub-blue, prv-green, link-blue...)."""
    return name.rsplit("-", 1)[-1]


def document(r, report):
    t0 = r.log.t0
    ms = lambda t: max(0, round((t - t0) * 1000))  # noqa: E731
    names = {arn: name for name, arn in r.tgs.items()}
    sides = [("public", "public-prod"), ("private", "private-prod"), ("private (NLB, PrivateLink)", "link-prod")]
    listeners = {r.listeners[key]: side for side, key in sides if key in r.listeners}
    if getattr(r, "nlb", None):
        listeners.update({r.nlb.real(arn): side for arn, side in list(listeners.items())})
    end_ms = max([e["t_ms"] for e in report["timeline"]] + [1000])

    # Private route changes once traffic starts to move are the follower's (or the flip); before, set-up.
    moving = min([e["t_ms"] for e in report["timeline"] if e["phase"] == "AllowTraffic"] + [end_ms + 1])
    weights, marks, flipped = {}, [], set()
    for t, arn, route in r.world.route_events:
        side = listeners.get(arn)
        if side is None:
            continue
        total = sum(w for _, w in route) or 1
        share = {}
        for tg, w in route:
            v = version(names.get(tg, names.get(getattr(r, "nlb", None) and r.nlb.moto(tg), tg)))
            share[v] = share.get(v, 0) + 100.0 * w / total
        for v in ("blue", "green"):
            weights.setdefault((side, v), []).append((ms(t), round(share.get(v, 0.0), 1)))
        if side != "public" and ms(t) > 0:
            text = "[" + ",".join(f"{names.get(tg, tg)}={w}" for tg, w in route) + "]"
            first_green = share.get("green", 0) >= 100 and side not in flipped
            flipped.update([side] if first_green else [])
            kind = "flip" if first_green else "follower" if ms(t) >= moving else "event"
            marks.append({"at_ms": ms(t), "kind": kind,
                          "label": f"{side} production route -> {text}"})
    series = [{"side": s, "version": v, "points": pts} for (s, v), pts in weights.items()]

    bucket_ms = max(250, (end_ms // 80) // 50 * 50)
    requests = []
    probe = getattr(r, "probe", None)
    for name, samples in (probe.samples.items() if probe else []):
        n = end_ms // bucket_ms + 1
        served, failed = {}, [0] * n
        for t, ok, what in samples:
            if ms(t) > end_ms:
                continue
            b = ms(t) // bucket_ms
            if ok:
                served.setdefault(what, [0] * n)[b] += 1
            else:
                failed[b] += 1
        side = {"link": "private (NLB, PrivateLink)"}.get(name, name)
        requests.append({"side": side, "bucket_ms": bucket_ms, "served": sorted(served.items()), "failed": failed})

    spans, started = [], {}
    for e in report["timeline"]:
        if e["event"].startswith("invoking "):
            started.setdefault(e["phase"], e["t_ms"])
        elif " reported " in e["event"] and e["phase"] in started:
            verdict = report["hooks"].get(e["phase"], {}).get("verdict", "?")
            spans.append({"label": e["phase"], "start_ms": started.pop(e["phase"]), "end_ms": e["t_ms"],
                          "verdict": verdict})
        elif e["phase"] in ("AllowTraffic", "AllowTestTraffic", "Rollback"):
            marks.append({"at_ms": e["t_ms"], "kind": "event", "label": f"{e['phase']}: {e['event']}"})
    for t, label in getattr(r.world.faults, "moments", []):
        marks.append({"at_ms": ms(t), "kind": "fault", "label": label})
    # The private groups' targets as ELB sees them, each group's own timing: registered (initial), healthy or
    # unhealthy, draining; one mark per group and state for the targets that changed together (within 0.3 s).
    together = {}
    for t, tg, ip, state in getattr(r.world, "health_events", []):
        name = names.get(tg, "")
        if name.startswith("pub") or not name:
            continue
        runs = together.setdefault((name, state), [])
        if runs and t - runs[-1][1] <= 0.3:
            runs[-1] = (runs[-1][0], t, runs[-1][2] + 1)
        else:
            runs.append((t, t, 1))
    for (name, state), runs in together.items():
        for first, last, n in runs:
            marks.append({"at_ms": ms(last), "kind": "event", "label": f"{name}: {n} target(s) {state}"})
    marks.sort(key=lambda m: m["at_ms"])

    facts = [("scenario", f"{report['scenario']} ({report.get('config')})"),
             ("outcome", f"{report['outcome']} (expected {report['expected_outcome']})"),
             ("invariants", ", ".join(f"{k} {'held' if v else 'BROKEN'}" for k, v in report["invariants"].items())),
             ("private dark time", f"{report['private_dark_ms']} ms"),
             ("flip skew", f"{report.get('flip_skew_ms')} ms"),
             ("max weight lag", f"{report['max_weight_lag_ms']} ms"),
             ("faults injected", json.dumps(report.get("faults_injected") or {}) or "none")]
    return {"title": f"Rehearsal: {report['scenario']}", "facts": facts, "end_ms": end_ms, "weights": series,
            "requests": requests, "spans": spans, "marks": marks}


def write(r, report, path, bin_dir):
    """Writes the page to `path` (and the document beside it, `path` + .json) with the project's renderer."""
    doc = document(r, report)
    with open(path + ".json", "w") as f:
        json.dump(doc, f)
    p = subprocess.run([os.path.join(bin_dir, "bluegreen-mirror"), "report", "--data", path + ".json"],
                       capture_output=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"bluegreen-mirror report failed: {p.stderr.decode()[-2000:]}")
    with open(path, "wb") as f:
        f.write(p.stdout)
