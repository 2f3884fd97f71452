"""IAM in the emulated account (iam.py), checked three ways:

1. evaluation: IAM's rules as the templates use them (deny over allow, wildcards, condition operators and set
   qualifiers, tags, leading keys) and the templates' intrinsics resolved for a deployment's resources;
2. on the wire: a function's call its role does not allow is refused with the service's AccessDenied, naming the
   action and the resource, and takes no effect; an allowed one goes through;
3. the templates against the rehearsals: every statement of the templates' roles is the only one allowing some
   call the rehearsals made (each report's `iam.decisions`), so removing it would have IAM refuse that call; and a
   rehearsal run with a statement removed from a copy of template.yaml fails, naming the action.

    python test_iam.py BIN_DIR REPORT.json...   (the reports of the rehearsals scripts/test has just run)
"""

import functools
import json
import os
import subprocess
import sys
import tempfile

import boto3
import yaml
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

import iam
import procs
import rehearse
from scenarios import access_key

results = []


def expect(name, cond, detail=""):
    results.append(bool(cond))
    print(f"{'ok  ' if cond else 'FAIL'} {name}" + (f": {detail}" if detail and not cond else ""))


def allowed(policy, action, resource, keys=None, tags=None):
    request = iam.Request(action, resource, keys, lookup=(lambda k: (tags or {}).get(k.split("/", 1)[1])
                                                          if k.startswith("aws:ResourceTag/") else None))
    return policy.decide(request)[0]


def check_evaluation():
    tg = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/prv-blue/1"
    p = iam.Policy([
        {"Sid": "A", "Effect": "Allow", "Action": ["elasticloadbalancing:Describe*"], "Resource": "*"},
        {"Sid": "B", "Effect": "Allow", "Action": "elasticloadbalancing:RegisterTargets",
         "Resource": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/prv-*/*"},
        {"Sid": "C", "Effect": "Deny", "Action": "elasticloadbalancing:RegisterTargets",
         "Resource": "arn:aws:elasticloadbalancing:*:*:targetgroup/prv-secret/*"},
        {"Sid": "D", "Effect": "Allow", "Action": "dynamodb:PutItem", "Resource": "*",
         "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["deployment#*"]}}},
        {"Sid": "E", "Effect": "Allow", "Action": "elasticloadbalancing:ModifyRule", "Resource": "*",
         "Condition": {"StringEquals": {"aws:ResourceTag/bluegreen-mirror:managed": "true"}}},
        {"Sid": "F", "Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": "*",
         "Condition": {"StringNotEquals": {"aws:ResourceTag/team": "payments"}}},
    ], "test")
    expect("an action matches its wildcard, in any case", allowed(p, "ElasticLoadBalancing:describetargethealth", "*"))
    expect("an action no statement names is denied", not allowed(p, "elasticloadbalancing:DeleteRule", "*"))
    expect("a resource matches its wildcard", allowed(p, "elasticloadbalancing:RegisterTargets", tg))
    expect("a resource outside it is denied",
           not allowed(p, "elasticloadbalancing:RegisterTargets", tg.replace("prv-blue", "pub-blue")))
    expect("an explicit deny wins over an allow",
           not allowed(p, "elasticloadbalancing:RegisterTargets", tg.replace("prv-blue", "prv-secret")))
    expect("ForAllValues holds when every leading key matches",
           allowed(p, "dynamodb:PutItem", "t", {"dynamodb:LeadingKeys": ["deployment#d-1"]}))
    expect("ForAllValues fails on a key outside it",
           not allowed(p, "dynamodb:PutItem", "t", {"dynamodb:LeadingKeys": ["config#web#web-bg"]}))
    expect("ForAllValues holds over a request without the key (IAM's documented pitfall)",
           allowed(p, "dynamodb:PutItem", "t", {}))
    expect("StringEquals on a resource tag: tagged", allowed(p, "elasticloadbalancing:ModifyRule", "r",
                                                             tags={"bluegreen-mirror:managed": "true"}))
    expect("StringEquals on a resource tag: untagged is denied",
           not allowed(p, "elasticloadbalancing:ModifyRule", "r", tags={}))
    expect("a negated operator holds when the key is absent", allowed(p, "dynamodb:GetItem", "t", tags={}))
    expect("a negated operator fails on a matching value",
           not allowed(p, "dynamodb:GetItem", "t", tags={"team": "payments"}))

    # template.yaml resolved for a binding whose private route is a listener rule.
    acct = "arn:aws:elasticloadbalancing:eu-west-1:123456789012"
    rule = f"{acct}:listener-rule/app/shared/1/2/3"
    binding = {"application": "web", "deployment_group": "web-bg",
               "pairs": [{"public_target_group": f"{acct}:targetgroup/pub-blue/1", "private_target_group": f"{acct}:targetgroup/prv-blue/2"},
                         {"public_target_group": f"{acct}:targetgroup/pub-green/3", "private_target_group": f"{acct}:targetgroup/prv-green/4"}],
               "private_production_route": {"rule": rule}}
    table = "arn:aws:dynamodb:eu-west-1:123456789012:table/state"
    t = iam.Template(rehearse.TEMPLATE, iam.single_binding_params(binding, "c"), "eu-west-1",
                     {"StateTable": "state", "StateTable.Arn": table})
    aat = t.function_policies("AfterAllowTrafficFunction")
    expect("template.yaml: AfterAllowTraffic may move a private rule route",
           allowed(aat, "elasticloadbalancing:ModifyRule", rule))
    expect("template.yaml: ... and no other rule", not allowed(aat, "elasticloadbalancing:ModifyRule", rule[:-1] + "4"))
    expect("template.yaml: a hook cannot write the stored bindings",
           not allowed(aat, "dynamodb:PutItem", table, {"dynamodb:LeadingKeys": ["config#web#web-bg"]}))
    expect("template.yaml: a hook writes its deployment's record",
           allowed(aat, "dynamodb:PutItem", table, {"dynamodb:LeadingKeys": ["deployment#d-1"]}))
    expect("template.yaml: a hook reports to CodeDeploy for any group (the Reference lists no resource type)",
           allowed(aat, "codedeploy:PutLifecycleEventHookExecutionStatus", "*"))
    fleet = iam.Template(rehearse.FLEET_TEMPLATE, {"CodeDeployApplications": "web,shop", "EcsClusterArns": "x"},
                         "eu-west-1", {"StateTable": "state", "StateTable.Arn": table})
    ai = fleet.function_policies("AfterInstallFunction")
    group = "arn:aws:codedeploy:eu-west-1:123456789012:deploymentgroup:{}/svc-bg"
    expect("fleet.yaml: the applications' list becomes one resource per application",
           allowed(ai, "codedeploy:GetDeployment", group.format("shop"))
           and not allowed(ai, "codedeploy:GetDeployment", group.format("other")))


def check_wire():
    """A function's calls through the emulated endpoint, with its template.yaml role."""
    r = rehearse.Rehearsal("happy", 1, None, open(os.devnull, "w"))
    try:
        r.start_account(health_checks=False)
        r.host = rehearse.LambdaHost({}, {}, r.run_dir, {})
        r.install_template()

        def client(service, function):
            return boto3.client(service, endpoint_url=r.endpoint, region_name=rehearse.REGION,
                                aws_access_key_id=access_key(function), aws_secret_access_key="x",
                                config=BotoConfig(retries={"max_attempts": 1}))

        def refusal(call):
            try:
                call()
            except ClientError as e:
                return e.response["Error"]["Code"], e.response["Error"].get("Message", "")
            return None, ""

        elb, ddb = client("elbv2", "after-install"), client("dynamodb", "after-install")
        target = [{"Id": "127.0.9.1", "Port": rehearse.TASK_PORT}]
        code, _ = refusal(lambda: elb.register_targets(TargetGroupArn=r.tgs["prv-blue"], Targets=target))
        expect("an allowed write goes through", code is None and f"127.0.9.1:{rehearse.TASK_PORT}" in r.members(r.tgs["prv-blue"]),
               code)
        code, message = refusal(lambda: elb.register_targets(TargetGroupArn=r.tgs["pub-blue"], Targets=target))
        expect("a write its role does not allow is refused with ELB's AccessDenied, naming action and resource",
               code == "AccessDenied" and "elasticloadbalancing:RegisterTargets" in message and r.tgs["pub-blue"] in message,
               f"{code}: {message}")
        expect("... and takes no effect", f"127.0.9.1:{rehearse.TASK_PORT}" not in r.members(r.tgs["pub-blue"]))
        code, message = refusal(lambda: elb.modify_listener(ListenerArn=r.listeners["public-prod"], DefaultActions=[
            {"Type": "forward", "TargetGroupArn": r.tgs["pub-green"]}]))
        expect("the public listener is not the functions' to move", code == "AccessDenied", f"{code}: {message}")
        item = {"pk": {"S": "config#web#web-bg"}, "doc": {"S": "{}"}}
        code, message = refusal(lambda: ddb.put_item(TableName=r.table, Item=item))
        expect("a hook writing the stored bindings gets DynamoDB's AccessDeniedException",
               code == "AccessDeniedException" and "dynamodb:PutItem" in message, f"{code}: {message}")
        code, _ = refusal(lambda: ddb.put_item(TableName=r.table, Item={**item, "pk": {"S": "deployment#d-9"}}))
        expect("a hook writes a deployment's record", code is None, code)
        invoke = lambda fn: refusal(lambda: client("lambda", fn).invoke(  # noqa: E731
            FunctionName=f"{rehearse.FUNCTION_PREFIX}-reconciler", InvocationType="Event", Payload=b"{}"))
        code, message = invoke("after-install")
        expect("AfterInstall may not start the follower", code == "AccessDeniedException", f"{code}: {message}")
        code, message = invoke("before-allow-traffic")
        expect("BeforeAllowTraffic may (authorised; the rehearsal's Lambda then answers as it does)",
               code != "AccessDeniedException", f"{code}: {message}")
        refused = {(who, action) for who, action, _ in r.world.iam.denied()}
        expect("every refusal is recorded", refused == {("after-install", "elasticloadbalancing:RegisterTargets"),
                                                        ("after-install", "elasticloadbalancing:ModifyListener"),
                                                        ("after-install", "dynamodb:PutItem"),
                                                        ("after-install", "lambda:InvokeFunction")}, refused)
        r.world.stop.set()
    finally:
        procs.kill_all()


@functools.lru_cache(maxsize=None)
def statements_of(policy_name):
    """The Sids of a policy named as iam.Template names it ("<file> <logical id>", several joined by " + ")."""
    out = {}  # (file, logical id, Sid) -> actions
    for part in policy_name.split(" + "):
        path, logical = part.split(" ", 1)
        t = iam.load_template(os.path.join(rehearse.ROOT, "infra", path))
        props = t["Resources"][logical]["Properties"]
        statements = (props["PolicyDocument"]["Statement"] if "PolicyDocument" in props
                      else [st for p in props["Policies"] for st in p["Statement"]])
        for st in statements:
            out[(path, logical, st["Sid"])] = st["Action"]
    return out


def check_statements(paths):
    """Every statement of the templates' roles is the only one allowing some call the rehearsals made: removing it
    from its template would have IAM refuse that call. A statement is counted by its Sid in its template, whichever
    function made the call: which function makes a call can be a matter of timing (ECS's task events let the
    reconciler mirror the replacement tasks before AfterInstall does), and the roles share their statements so that
    each function can take the other's part. Per function, what the rehearsals did not need is printed."""
    needed, by_function, policies = set(), set(), set()
    for path in paths:
        with open(path) as f:
            decisions = json.load(f).get("iam", {}).get("decisions", [])
        for policy, _action, _resource, ok, sids, _n in decisions:
            policies.add(policy)
            if ok and len(sids) == 1:
                for path_, logical, sid in statements_of(policy):
                    if sid == sids[0]:
                        needed.add((path_, sid))
                        by_function.add((path_, logical, sid))
    every = {}
    for policy in policies:
        every.update(statements_of(policy))
    expect(f"the rehearsals authorised calls under {len(policies)} roles of the templates", len(policies) >= 9,
           sorted(policies))
    for path, sid in sorted({(p, sid) for p, _, sid in every}):
        actions = sorted({a for (p, _, s), acts in every.items() if (p, s) == (path, sid) for a in acts})
        expect(f"{path} {sid}: some call needs it and only it", (path, sid) in needed,
               f"no call the rehearsals made needed {actions}: drop the statement or rehearse what needs it")
    for (path, logical, sid) in sorted(set(every) - by_function):
        print(f"     ({path} {logical} {sid}: its own calls here did not need it: another function made them, or "
              "its path was not taken)")


def without_statement(path, logical, sid):
    """A copy of a template without one statement of a function's role, under target/ (never beside the templates,
    which other checks read); the caller removes the file."""
    t = iam.load_template(path)
    for p in t["Resources"][logical]["Properties"]["Policies"]:
        p["Statement"] = [st for st in p["Statement"] if st.get("Sid") != sid]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=os.path.join(rehearse.ROOT, "target"),
                                     delete=False) as copy:
        yaml.safe_dump(t, copy, sort_keys=False)
    return copy.name


def check_removed_statement(bin_dir):
    """A rehearsal with AfterInstall's ReadDeployment statement removed from a copy of template.yaml fails before
    traffic moves, and says which permission to grant."""
    copy = without_statement(rehearse.TEMPLATE, "AfterInstallFunction", "ReadDeployment")
    try:
        p = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "rehearse.py"), "--scenario", "happy",
                            "--json", "--template", copy], capture_output=True, timeout=600,
                           env={**os.environ, "BLUEGREEN_MIRROR_BIN_DIR": bin_dir})
    finally:
        os.unlink(copy)
    try:
        report = json.loads(p.stdout)
    except ValueError:
        expect("the rehearsal without ReadDeployment reports", False, p.stderr.decode(errors="replace")[-800:])
        return
    refused = {(x["principal"], x["action"]) for x in report["iam"]["refused"]}
    messages = " ".join(report["messages"])
    expect("without AfterInstall's ReadDeployment the rehearsal fails", not report["passed"] and p.returncode != 0)
    expect("... IAM refused AfterInstall's GetDeployment", ("after-install", "codedeploy:GetDeployment") in refused,
           refused)
    expect("... AfterInstall reported Failed naming the permission, and production traffic did not move",
           report["outcome"] == "rolled_back" and "grant codedeploy:GetDeployment" in messages
           and report["flip_skew_ms"] is None, messages[:600])


def main():
    bin_dir, reports = sys.argv[1], sys.argv[2:]
    procs.install_cleanup()
    check_evaluation()
    check_wire()
    if reports:
        check_statements(reports)
    check_removed_statement(bin_dir)
    failed = results.count(False)
    print(f"iam: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
