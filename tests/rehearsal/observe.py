"""What the functions print, read back as CloudWatch would: their log lines (JSON, as the SAM templates set
Lambda's log format) and the Embedded Metric Format documents among them, cross-checked against what the emulated
endpoint counted. Used by rehearse.py for each hook's report; check_report.py judges the result."""

import json


def read_lines(path):
    try:
        with open(path, "rb") as f:
            return [line.decode("utf-8", "replace").rstrip("\n") for line in f if line.strip()]
    except OSError:
        return []


def hook_observation(attempts, world):
    """For a hook's attempts: whether every log line was a JSON object, whether the summary line carried its fields,
    and the metrics each attempt published (one EMF document per attempt that ran to its end), beside the ELB calls
    the endpoint counted for those same attempts."""
    docs, not_json, summaries, endpoint_calls, endpoint_throttles = [], 0, [], 0, 0
    for a in attempts:
        if a.crashed or not getattr(a, "log_path", None):
            continue
        for line in read_lines(a.log_path):
            try:
                doc = json.loads(line)
            except ValueError:
                not_json += 1
                continue
            if not isinstance(doc, dict):
                not_json += 1
            elif "_aws" in doc and "Hook" in doc:
                docs.append(doc)
            elif doc.get("target") == "bluegreen_mirror::summary":
                summaries.append(doc)
        with world.lock:
            mine = [c for c in world.elb_calls if c[3] == a.token]
        endpoint_calls += len(mine)
        endpoint_throttles += sum(1 for c in mine if c[4])
    fields = ("deployment_id", "hook", "verdict", "registered", "deregistered", "route_before", "route_after",
              "duration_ms", "message")
    return {
        "log_lines_not_json": not_json,
        "summary_lines_with_every_field": sum(1 for s in summaries if all(k in s for k in fields)),
        "metric_documents": len(docs),
        "hook_failed": [d.get("HookFailed") for d in docs],
        "elb_calls_reported": sum(int(d.get("ElbCalls", 0)) for d in docs),
        "elb_calls_at_endpoint": endpoint_calls,
        "elb_throttles_reported": sum(int(d.get("ElbThrottles", 0)) for d in docs),
        "elb_throttled_by_account_buckets": endpoint_throttles,
        "flip_skew_ms": next((d["FlipSkew"] for d in docs if "FlipSkew" in d), None),
        "namespaces": sorted({m["Namespace"] for d in docs for m in d["_aws"]["CloudWatchMetrics"]}),
    }


def problems(hook, report):
    """What a hook's observation gets wrong (check_report.py), for attempts that all ran to their end."""
    o = report.get("observed")
    if not o or report.get("crashed_attempts") or report["verdict"] == "NoReport":
        return []
    out = []
    if o["log_lines_not_json"]:
        out.append(f"{hook}: {o['log_lines_not_json']} log lines are not JSON")
    if o["summary_lines_with_every_field"] < 1:
        out.append(f"{hook}: no summary line with every field")
    if o["metric_documents"] < 1:
        out.append(f"{hook}: no metrics published")
    failed = 0.0 if report["verdict"] == "Succeeded" else 1.0
    if o["hook_failed"] and o["hook_failed"][-1] != failed:
        out.append(f"{hook}: HookFailed {o['hook_failed'][-1]} for a {report['verdict']} verdict")
    if o["elb_calls_reported"] != o["elb_calls_at_endpoint"]:
        out.append(f"{hook}: ElbCalls {o['elb_calls_reported']} but the endpoint counted {o['elb_calls_at_endpoint']}")
    if o["elb_throttles_reported"] < o["elb_throttled_by_account_buckets"]:
        out.append(f"{hook}: ElbThrottles {o['elb_throttles_reported']} but the account's buckets refused "
                   f"{o['elb_throttled_by_account_buckets']}")
    return out
