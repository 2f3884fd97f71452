"""infra/bindings.schema.json against the functions: a corpus of bindings documents, the example fleet file and
mutations of it, each judged by the schema (jsonschema, Draft 2020-12) and by the real after-install binary at
cold start (which refuses a bad document with "configuration error"). They must agree on every document, except
the rules a schema cannot state (distinct groups across sides, one owner per private group, ...), which the
binary alone refuses and the schema's description lists. So the schema an editor checks a file against never
accepts what `bindings apply` would refuse for its shape, nor refuses what it would accept.

    python tests/infra/check_schema.py BIN_DIR
"""

import copy
import json
import os
import sys

from jsonschema import Draft202012Validator

from check_infra import ROOT, cold_start

TG = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/{}/{:016x}"
LISTENER = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:listener/{}/internal/5e6f7a8b9c0d1e2f/{:016x}"
RULE = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:listener-rule/app/internal/5e6f7a8b9c0d1e2f/6f7a8b9c0d1e2f3a/{:016x}"


def mutations(example):
    """(name, document, whether only the binary refuses it) for documents around the example."""
    def m(name, change, semantic=False):
        doc = copy.deepcopy(example)
        change(doc)
        return name, doc, semantic

    first = lambda d: d["bindings"][0]  # noqa: E731
    second = lambda d: d["bindings"][1]  # noqa: E731
    out = [
        m("the example", lambda d: None),
        m("with $schema", lambda d: d.update({"$schema": "./bindings.schema.json"})),
        m("no bindings", lambda d: d.update({"bindings": []})),
        m("bindings not a list", lambda d: d.update({"bindings": {}})),
        m("an unknown top-level field", lambda d: d.update({"binding": []})),
        m("an unknown binding field (a typo)", lambda d: first(d).update({"health_timeout": 30})),
        m("no application", lambda d: first(d).pop("application")),
        m("a blank deployment group", lambda d: first(d).update({"deployment_group": "  "})),
        m("application not a string", lambda d: first(d).update({"application": 7})),
        m("one pair", lambda d: first(d)["pairs"].pop()),
        m("three pairs", lambda d: first(d)["pairs"].append(copy.deepcopy(first(d)["pairs"][0]))),
        m("a pair with an unknown field", lambda d: first(d)["pairs"][0].update({"weight": 1})),
        m("a pair missing its private group", lambda d: first(d)["pairs"][0].pop("private_target_group")),
        m("a target group that is a listener ARN",
          lambda d: first(d)["pairs"][0].update({"private_target_group": LISTENER.format("app", 1)})),
        m("a target group ARN of another service",
          lambda d: first(d)["pairs"][0].update({"private_target_group": "arn:aws:ecs:eu-west-1:111122223333:targetgroup/x/1"})),
        m("a target group ARN without its id",
          lambda d: first(d)["pairs"][0].update({"private_target_group": "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/x"})),
        m("a route as a bare string", lambda d: first(d).update({"private_production_route": RULE.format(1)})),
        m("a route naming both kinds",
          lambda d: first(d).update({"private_production_route": {"rule": RULE.format(1), "listener": LISTENER.format("app", 1)}})),
        m("an empty route", lambda d: first(d).update({"private_production_route": {}})),
        m("a route of an unknown kind", lambda d: first(d).update({"private_production_route": {"target": RULE.format(1)}})),
        m("a rule route given a listener ARN", lambda d: first(d).update({"private_production_route": {"rule": LISTENER.format("app", 1)}})),
        m("a listener route given a rule ARN", lambda d: first(d).update({"private_production_route": {"listener": RULE.format(2)}})),
        m("a listener route", lambda d: first(d).update({
            "private_production_route": {"listener": LISTENER.format("app", 3)},
            "private_test_route": {"listener": LISTENER.format("app", 4)}})),
        m("health timeout 0", lambda d: first(d).update({"health_timeout_seconds": 0})),
        m("health timeout 3600", lambda d: first(d).update({"health_timeout_seconds": 3600})),
        m("health timeout 3601", lambda d: first(d).update({"health_timeout_seconds": 3601})),
        m("health timeout as text", lambda d: first(d).update({"health_timeout_seconds": "300"})),
        m("health timeout fractional", lambda d: first(d).update({"health_timeout_seconds": 1.5})),
        m("no test route on an ALB", lambda d: first(d).pop("private_test_route")),
        m("observe mode", lambda d: first(d).update({"mode": "observe"})),
        m("enforce mode", lambda d: first(d).update({"mode": "enforce"})),
        m("an unknown mode", lambda d: first(d).update({"mode": "dry-run"})),
        m("a mode in capitals", lambda d: first(d).update({"mode": "Observe"})),
        m("a side with an unknown field", lambda d: second(d)["additional_private_sides"][0].update({"name": "link"})),
        m("a side without its route", lambda d: second(d)["additional_private_sides"][0].pop("private_production_route")),
        m("a side with one pair", lambda d: second(d)["additional_private_sides"][0]["pairs"].pop()),
        m("sides not a list", lambda d: second(d).update({"additional_private_sides": {}})),
        # What only the binary can refuse.
        m("the same group twice in a pair", lambda d: first(d)["pairs"][0].update(
            {"private_target_group": first(d)["pairs"][0]["public_target_group"]}), semantic=True),
        m("a deployment group bound twice", lambda d: d["bindings"].append(copy.deepcopy(first(d))), semantic=True),
        m("test route equal to production", lambda d: first(d).update(
            {"private_test_route": first(d)["private_production_route"]}), semantic=True),
        m("an NLB side without a test route", lambda d: second(d)["additional_private_sides"][0].pop("private_test_route"),
          semantic=True),
        m("a private group owned by two bindings", lambda d: second(d)["pairs"][0].update(
            {"private_target_group": first(d)["pairs"][0]["private_target_group"]}), semantic=True),
    ]
    return out


def main():
    bin_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release")
    with open(os.path.join(ROOT, "infra", "bindings.schema.json")) as f:
        schema = json.load(f)
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    with open(os.path.join(ROOT, "infra", "fleet.example.json")) as f:
        example = json.load(f)
    failures = []
    for name, doc, semantic in mutations(example):
        schema_ok = validator.is_valid(doc)
        out = cold_start(bin_dir, json.dumps(doc))
        binary_ok = "configuration error" not in out
        want_schema = binary_ok or semantic
        if schema_ok != want_schema or (semantic and binary_ok):
            errors = "; ".join(e.message for e in validator.iter_errors(doc))[:300]
            failures.append(f"{name}: schema {'accepts' if schema_ok else 'refuses'} ({errors or '-'}), binary "
                            f"{'accepts' if binary_ok else 'refuses: ' + out.strip()[-300:]}")
        print(f"  {'ok ' if not failures or not failures[-1].startswith(name + ':') else 'BAD'} {name}: "
              f"schema {'accepts' if schema_ok else 'refuses'}, binary {'accepts' if binary_ok else 'refuses'}")
    if failures:
        print("bindings schema and binary disagree:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)
    print(f"bindings schema: agrees with the binary on {len(mutations(example))} documents")


if __name__ == "__main__":
    main()
