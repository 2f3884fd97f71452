"""Keeps infra/ from drifting away from the code: the template's functions are the workspace's binaries, built for
Lambda the way the README says; the environment it sets is the one the code reads; the bindings JSON it renders is
accepted by the real binary's cold-start configuration check (and a broken one is refused, so this check can
fail); the appspec example parses and names the template's hooks.

    python check_infra.py BIN_DIR      (BIN_DIR: the release binaries, e.g. target/release)
"""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The rehearsal's reading of the templates (iam.py needs only PyYAML, which this venv has too).
sys.path.insert(0, os.path.join(ROOT, "tests", "rehearsal"))
import iam  # noqa: E402
problems = []


def check(cond, message):
    if not cond:
        problems.append(message)


def load(path):
    """A template with CloudFormation's short-form intrinsics (!Sub, !Ref, ...) read as {"Fn::X": value}, as the
    rehearsal's IAM reads it."""
    return iam.load_template(os.path.join(ROOT, path))


# The hooks crate's binaries that are not Lambda functions.
NOT_FUNCTIONS = {"bluegreen-mirror"}


def cargo_bins():
    with open(os.path.join(ROOT, "hooks", "Cargo.toml")) as f:
        return set(re.findall(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', f.read())) - NOT_FUNCTIONS


def env_constants():
    with open(os.path.join(ROOT, "shared", "src", "config.rs")) as f:
        return dict(re.findall(r'pub const (ENV_\w+): &str = "([^"]+)";', f.read()))


def condition(conditions, name, params):
    """Evaluates one of the template's conditions, all of the form `!Not [!Equals [!Ref Parameter, ""]]`."""
    (ref, empty), = [c["Fn::Equals"] for c in conditions[name]["Fn::Not"]]
    return params.get(ref["Ref"], "") != empty


def render_sub(sub, params, conditions):
    """Renders a Fn::Sub of the bindings (with its variable map, nested Fn::If and Fn::Sub) for the given
    parameter values."""
    template, variables = (sub, {}) if isinstance(sub, str) else sub
    values = dict(params)
    for name, chosen in variables.items():
        while isinstance(chosen, dict) and "Fn::If" in chosen:
            cond, yes, no = chosen["Fn::If"]
            chosen = yes if condition(conditions, cond, params) else no
        values[name] = render_sub(chosen["Fn::Sub"], params, conditions) if isinstance(chosen, dict) else chosen
    return re.sub(r"\$\{([\w:]+)\}", lambda m: str(values[m.group(1)]), template)


def cold_start(bin_dir, bindings):
    """Starts the real after-install binary with this configuration; returns what it printed before failing to
    reach a Lambda Runtime API (none runs here)."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "BLUEGREEN_MIRROR_TABLE": "state",
        "BLUEGREEN_MIRROR_BINDINGS": bindings,
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9",
        "AWS_LAMBDA_FUNCTION_NAME": "after-install",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    }
    p = subprocess.run([os.path.join(bin_dir, "after-install")], env=env, capture_output=True, timeout=30)
    return (p.stdout + p.stderr).decode(errors="replace")


def built_by_make():
    """What infra/build/Makefile builds for each function's logical id (`sam build` runs its target)."""
    with open(os.path.join(ROOT, "infra", "build", "Makefile")) as f:
        return dict(re.findall(r"^build-(\w+): FUNCTION = ([a-z-]+)$", f.read(), re.M))


def function_of(name, resource):
    """The binary a function resource deploys: built by `sam build` through infra/build/Makefile (its CodeUri
    the Makefile's folder, its build method makefile), the target named after the resource."""
    props, meta = resource["Properties"], resource.get("Metadata", {})
    check(props.get("CodeUri") == "build/" and meta.get("BuildMethod") == "makefile",
          f"{name}: not built by sam build through infra/build/Makefile (CodeUri {props.get('CodeUri')!r}, "
          f"BuildMethod {meta.get('BuildMethod')!r})")
    return built_by_make().get(name)


def main():
    bin_dir = sys.argv[1]
    t = load("infra/template.yaml")
    resources = t["Resources"]
    functions = {k: v for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}
    globals_fn = t["Globals"]["Function"]

    # Functions ↔ binaries: each deploys the bootstrap scripts/package builds for arm64 on provided.al2023.
    uris = {function_of(name, f): name for name, f in functions.items()}
    check(set(uris) == cargo_bins(), f"template functions {sorted(uris)} != binaries {sorted(cargo_bins())}")
    check(globals_fn["Runtime"] == "provided.al2023", "runtime is not provided.al2023")
    check(globals_fn["Handler"] == "bootstrap", "handler is not bootstrap")
    check(globals_fn["Architectures"] == ["arm64"], "architecture is not arm64")
    check(all(f["Properties"]["Timeout"] <= 900 for f in functions.values()), "a timeout exceeds Lambda's 15 minutes")

    # The environment is the one the code reads.
    consts = env_constants()
    env = globals_fn["Environment"]["Variables"]
    check(set(env) <= set(consts.values()), f"template sets {sorted(set(env) - set(consts.values()))}, unknown to config.rs")
    for required in ("ENV_TABLE", "ENV_BINDINGS", "ENV_FOLLOWER"):
        check(consts.get(required) in env, f"template does not set {consts.get(required)}")
    reconciler = functions.get("ReconcilerFunction", {}).get("Properties", {})
    check(env.get(consts["ENV_FOLLOWER"]) == reconciler.get("FunctionName"), "the follower variable does not name the reconciler")

    # The rendered bindings are accepted by the real binary; a broken one is refused.
    acct = "arn:aws:elasticloadbalancing:eu-west-1:111122223333"
    params = {
        "CodeDeployApplication": "web", "CodeDeployDeploymentGroup": "web-bg",
        "PublicBlueTargetGroupArn": f"{acct}:targetgroup/pub-blue/1", "PublicGreenTargetGroupArn": f"{acct}:targetgroup/pub-green/2",
        "PrivateBlueTargetGroupArn": f"{acct}:targetgroup/prv-blue/3", "PrivateGreenTargetGroupArn": f"{acct}:targetgroup/prv-green/4",
        "PrivateProductionListenerArn": f"{acct}:listener/app/private/9/80", "HealthTimeoutSeconds": 300,
    }
    sub = env[consts["ENV_BINDINGS"]]["Fn::Sub"]
    second = {
        "SecondPrivateBlueTargetGroupArn": f"{acct}:targetgroup/lnk-blue/5",
        "SecondPrivateGreenTargetGroupArn": f"{acct}:targetgroup/lnk-green/6",
        "SecondPrivateProductionListenerArn": f"{acct}:listener/net/link/7/80",
        "SecondPrivateTestListenerArn": f"{acct}:listener/net/link/7/8080",
    }
    # A route is a listener's default action or a listener rule (a shared internal ALB, one rule per service).
    rule = f"{acct}:listener-rule/app/private/9/80/11"
    routes = [({}, "listener", None),
              ({"PrivateTestListenerArn": f"{acct}:listener/app/private/9/8080"}, "listener", "listener"),
              ({"PrivateProductionListenerArn": "", "PrivateProductionRuleArn": rule,
                "PrivateTestRuleArn": f"{acct}:listener-rule/app/private/9/80/12"}, "rule", "rule")]
    for extra, production, test in routes:
        for sides in (1, 2):
            values = dict(params, **extra, **(second if sides == 2 else {}))
            rendered = render_sub(sub, values, t["Conditions"])
            try:
                doc = json.loads(rendered)
            except ValueError as e:
                check(False, f"rendered bindings are not JSON ({e}): {rendered}")
                continue
            b = doc["bindings"][0]
            check(list(b["private_production_route"]) == [production], f"production route rendered as {b}")
            check(list(b.get("private_test_route", {})) == ([test] if test else []), f"test route rendered as {b}")
            check(len(b.get("additional_private_sides", [])) == sides - 1, f"{sides} private side(s) rendered as {b}")
            out = cold_start(bin_dir, rendered)
            check("configuration error" not in out, f"the binary refuses the template's bindings: {out[-600:]}")

    # Least privilege over every private side: each function may change exactly the private groups and
    # listeners the bindings name, the second side's only when there is one.
    private_groups = {"PrivateBlueTargetGroupArn", "PrivateGreenTargetGroupArn", "SecondPrivateBlueTargetGroupArn",
                      "SecondPrivateGreenTargetGroupArn"}
    private_routes = {"PrivateProductionListenerArn", "PrivateProductionRuleArn", "PrivateTestListenerArn",
                      "PrivateTestRuleArn", "SecondPrivateProductionListenerArn", "SecondPrivateTestListenerArn"}
    for name, f in functions.items():
        statements = {st["Sid"]: st for st in f["Properties"]["Policies"][0]["Statement"]}
        for sid, want in (("MirrorTargets", private_groups), ("RoutePrivate", private_routes)):
            named = set(re.findall(r"'Ref': '(\w+)'", str(statements.get(sid, {}).get("Resource")))) - {"AWS::NoValue"}
            check(named == want, f"{name} {sid} covers {sorted(named)}, not {sorted(want)}")
        check(set(statements.get("RoutePrivate", {}).get("Action", [])) ==
              {"elasticloadbalancing:ModifyListener", "elasticloadbalancing:ModifyRule"},
              f"{name} cannot move both kinds of route (ModifyListener and ModifyRule)")
        if name != "ReconcilerFunction":
            # The Service Authorization Reference lists no resource type for these: only "*" matches them, and a
            # hook invoked for a group the stack does not bind must still be able to report Failed.
            report = statements.get("ReportAndReadTargets", {})
            check(report.get("Resource") == "*" and "codedeploy:PutLifecycleEventHookExecutionStatus" in report.get("Action", []),
                  f"{name} may not report to CodeDeploy under every reading (PutLifecycleEventHookExecutionStatus on *)")
            # A hook writes its deployment's record and its binding's, never the stored bindings (config#...).
            state = statements.get("DeploymentState", {})
            keys = state.get("Condition", {}).get("ForAllValues:StringLike", {}).get("dynamodb:LeadingKeys", [])
            check("dynamodb:PutItem" in state.get("Action", []) and keys
                  and not any(isinstance(k, str) and re.fullmatch(k.replace("*", ".*"), "config#web#web-bg") for k in keys)
                  and "deployment#*" in keys,
                  f"{name}: its table writes are not limited to the keys it owns: {keys}")
    broken = json.dumps({"bindings": [{"application": "web", "deployment_group": "web-bg", "pairs": []}]})
    check("configuration error" in cold_start(bin_dir, broken), "the cold-start check did not refuse a broken binding")

    # The appspec example parses and references the template's hooks.
    appspec = load("infra/appspec.yaml")
    hooks = {k: v for h in appspec["Hooks"] for k, v in h.items()}
    check(set(hooks) == {"AfterInstall", "BeforeAllowTraffic", "AfterAllowTraffic"}, f"appspec hooks: {sorted(hooks)}")
    for event, arn in hooks.items():
        suffix = re.sub(r"(?<!^)(?=[A-Z])", "-", event).lower()
        check(arn.endswith(f"-{suffix}"), f"appspec {event} does not name the {suffix} function")
    check(appspec["Resources"][0]["TargetService"]["Type"] == "AWS::ECS::Service", "appspec target is not an ECS service")

    # The example fleet file the configuration guide points at is a document the functions accept.
    with open(os.path.join(ROOT, "infra", "fleet.example.json")) as f:
        example = f.read()
    out = cold_start(bin_dir, example)
    check("configuration error" not in out, f"infra/fleet.example.json is refused: {out[-400:]}")

    check_names()
    check_samconfig()
    check_release_metadata()
    check_fleet(consts)
    check_concurrency()
    check_monitoring()
    check_read_lane()
    check_state_table()

    # The private side's outputs are exactly what template.yaml takes.
    private = load("infra/private-side.yaml")
    check_private_templates()
    check_shared_binding(bin_dir)
    for out in private["Outputs"]:
        if out.startswith("Private"):
            check(out in t["Parameters"], f"private-side output {out} is not a parameter of template.yaml")

    if problems:
        for p in problems:
            print(f"infra: {p}")
        print(f"infra: 0 passed, {len(problems)} failed")
        return 1
    print("infra: template, environment, bindings and appspec match the code")
    return 0


# The tag the fleet stack's roles require on every private resource they change; `check` and `bindings apply`
# verify it (MANAGED_TAG in the code).
MANAGED_TAG = "bluegreen-mirror:managed"


def check_fleet(consts):
    """fleet.yaml: the same functions and binaries, no bindings in the environment (they are stored), every
    mutating ELB action allowed only on resources carrying the managed tag, and the tag the code checks."""
    t = load("infra/fleet.yaml")
    functions = {k: v for k, v in t["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    uris = {function_of(name, f) for name, f in functions.items()}
    check(uris == cargo_bins(), f"fleet.yaml functions {sorted(uris)} != binaries {sorted(cargo_bins())}")
    env = t["Globals"]["Function"]["Environment"]["Variables"]
    check(set(env) <= set(consts.values()), f"fleet.yaml sets {sorted(set(env) - set(consts.values()))}, unknown to config.rs")
    check(consts["ENV_BINDINGS"] not in env, "fleet.yaml must not set the bindings: they are stored in the table")
    with open(os.path.join(ROOT, "shared", "src", "config.rs")) as f:
        config_rs = f.read()
    check(f'MANAGED_TAG: &str = "{MANAGED_TAG}"' in config_rs, f"config.rs does not name the tag {MANAGED_TAG}")
    # The fleet's default read budget is the functions' own (the rehearsal's idle fleet scales it to its clock).
    default = re.search(r"const DEFAULT_ELB_READS_PER_S: f64 = ([0-9.]+);", config_rs)
    check(default is not None and float(default.group(1)) == float(t["Parameters"]["ElbReadsPerSecond"]["Default"]),
          f"fleet.yaml's ElbReadsPerSecond default {t['Parameters']['ElbReadsPerSecond']['Default']} is not "
          f"config.rs's DEFAULT_ELB_READS_PER_S {default.group(1) if default else '(not found)'}")
    for name, f in functions.items():
        for st in f["Properties"]["Policies"][0]["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            mutating = [a for a in actions if a.startswith("elasticloadbalancing:") and not a.split(":")[1].startswith("Describe")]
            if mutating:
                cond = st.get("Condition", {}).get("StringEquals", {})
                check(cond.get(f"aws:ResourceTag/{MANAGED_TAG}") == "true",
                      f"fleet.yaml {name} {st['Sid']}: {mutating} not limited to resources tagged {MANAGED_TAG}=true")
        if name != "ReconcilerFunction":
            statements = f["Properties"]["Policies"][0]["Statement"]
            report = [st for st in statements if "codedeploy:PutLifecycleEventHookExecutionStatus" in st["Action"]]
            check(len(report) == 1 and report[0]["Resource"] == "*",
                  f"fleet.yaml {name} may not report to CodeDeploy under every reading (PutLifecycleEventHookExecutionStatus on *)")
            for st in (st for st in statements if "dynamodb:PutItem" in st["Action"]):
                keys = st.get("Condition", {}).get("ForAllValues:StringLike", {}).get("dynamodb:LeadingKeys", [])
                check(keys and not any(re.fullmatch(k.replace("*", ".*"), "config#web#web-bg") for k in keys),
                      f"fleet.yaml {name} may write the stored bindings (config#...): {keys or 'any key'}")
        if name == "ReconcilerFunction":
            check(f["Properties"].get("ReservedConcurrentExecutions") == {"Fn::FindInMap": ["Concurrency", {"Ref": "ConcurrentDeployments"}, "Reconciler"]},
                  "fleet.yaml: the reconciler's concurrency is not sized by ConcurrentDeployments")


# Lambda's limit on a function's name.
LAMBDA_NAME_MAX = 64


def check_names():
    """Every function's name is built from the FunctionNamePrefix parameter, never the stack's name (which may be
    128 characters long), and the longest prefix the parameter admits still fits Lambda's 64 characters."""
    for path in ("infra/template.yaml", "infra/fleet.yaml"):
        t = load(path)
        prefix = t["Parameters"].get("FunctionNamePrefix", {})
        m = re.search(r"\{1,(\d+)\}", prefix.get("AllowedPattern", ""))
        check(m is not None, f"{path}: FunctionNamePrefix has no length bound in its AllowedPattern")
        longest = "x" * int(m.group(1)) if m else ""
        for name, r in t["Resources"].items():
            if r["Type"] != "AWS::Serverless::Function":
                continue
            sub = r["Properties"].get("FunctionName", {}).get("Fn::Sub", "")
            check("${FunctionNamePrefix}" in sub and "AWS::StackName" not in sub,
                  f"{path} {name}: its name is not built from FunctionNamePrefix: {sub!r}")
            full = sub.replace("${FunctionNamePrefix}", longest)
            check(len(full) <= LAMBDA_NAME_MAX, f"{path} {name}: {full!r} exceeds Lambda's {LAMBDA_NAME_MAX} characters")


# Everything on a private side that the fleet's roles may change, or that an operator finds by the tag.
TAGGED = ("AWS::ElasticLoadBalancingV2::TargetGroup", "AWS::ElasticLoadBalancingV2::LoadBalancer",
          "AWS::ElasticLoadBalancingV2::Listener", "AWS::ElasticLoadBalancingV2::ListenerRule")


def check_private_templates():
    """The private-side templates (one load balancer per service; the shared internal ALB and a service on it) can
    each be deployed once per service (no default name to collide on), tag what the fleet's roles may change, and
    log to a bucket ELB may write to. A service on the shared ALB gets a binding the functions and the schema
    accept, with rule routes."""
    log_writers = {"infra/private-side.yaml": {"logdelivery.elasticloadbalancing.amazonaws.com", "delivery.logs.amazonaws.com"},
                   "infra/shared-alb.yaml": {"logdelivery.elasticloadbalancing.amazonaws.com"}}
    for path in ("infra/private-side.yaml", "infra/shared-alb.yaml", "infra/shared-alb-service.yaml"):
        t = load(path)
        for param in ("NamePrefix", "Name"):
            if param in t["Parameters"]:
                check("Default" not in t["Parameters"][param], f"{path}: a default {param} collides between services")
        res = t["Resources"]
        for name, r in res.items():
            if r["Type"] in TAGGED:
                tags = {tag["Key"]: tag["Value"] for tag in r["Properties"].get("Tags", [])}
                check(tags.get(MANAGED_TAG) == "true", f"{path} {name} is not tagged {MANAGED_TAG}=true")
        if path in log_writers:
            policy = res.get("LogBucketPolicy", {}).get("Properties", {}).get("PolicyDocument", {})
            granted = set()
            for st in policy.get("Statement", []):
                if isinstance(st, dict) and st.get("Effect") == "Allow" and st.get("Action") == "s3:PutObject":
                    granted.add(st.get("Principal", {}).get("Service"))
            check(log_writers[path] <= granted,
                  f"{path}: the log bucket does not let ELB's log delivery write ({sorted(filter(None, granted))})")
    shared, service = load("infra/shared-alb.yaml"), load("infra/shared-alb-service.yaml")
    for out in ("SharedProductionListenerArn", "SharedTestListenerArn"):
        check(out in shared["Outputs"] and out in service["Parameters"],
              f"shared-alb.yaml's {out} is not what shared-alb-service.yaml takes")
    for name in ("ProductionRule", "TestRule"):
        rule = service["Resources"][name]["Properties"]
        check(rule["ListenerArn"] == {"Ref": f"Shared{name.replace('Rule', '')}ListenerArn"},
              f"shared-alb-service.yaml {name} is not on the shared {name.replace('Rule', '').lower()} listener")
    forward = service["Resources"]["ProductionRule"]["Properties"]["Actions"][0]["ForwardConfig"]["TargetGroups"]
    check([g["Weight"] for g in forward] == [100, 0],
          "shared-alb-service.yaml: the production rule must forward to both groups, the idle one at weight 0")


def check_shared_binding(bin_dir):
    """shared-alb-service.yaml's BindingJson, rendered as CloudFormation would for a service, is a binding the
    functions accept (in a bindings document) with rule routes."""
    service = load("infra/shared-alb-service.yaml")
    tg = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/{}/{:016x}"
    rule = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:listener-rule/app/fleet-lb/5e6f7a8b9c0d1e2f/{:016x}/{:016x}"
    params = {"Application": "orders", "DeploymentGroup": "orders-bg", "HealthTimeoutSeconds": 300,
              "PublicBlueTargetGroupArn": tg.format("orders-pub-blue", 1),
              "PublicGreenTargetGroupArn": tg.format("orders-pub-green", 2),
              "BlueTargetGroup": tg.format("orders-blue", 3), "GreenTargetGroup": tg.format("orders-green", 4),
              "ProductionRule": rule.format(5, 6), "TestRule": rule.format(7, 8)}
    rendered = render_sub(service["Outputs"]["BindingJson"]["Value"]["Fn::Sub"], params, {})
    try:
        binding = json.loads(rendered)
    except ValueError as e:
        check(False, f"shared-alb-service.yaml BindingJson is not JSON ({e}): {rendered}")
        return
    check(binding["private_production_route"] == {"rule": params["ProductionRule"]},
          f"shared-alb-service.yaml BindingJson routes: {binding['private_production_route']}")
    out = cold_start(bin_dir, json.dumps({"bindings": [binding]}))
    check("configuration error" not in out, f"shared-alb-service.yaml BindingJson is refused: {out[-400:]}")


def check_release_metadata():
    """One version everywhere: the workspace's is the one the templates' Serverless Application Repository entries
    declare and the CHANGELOG describes; each entry's licence and readme exist."""
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        version = re.search(r'^version = "(.+)"$', f.read(), re.M).group(1)
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        check(re.search(rf"^## {re.escape(version)} ", f.read(), re.M) is not None, f"CHANGELOG.md has no section for {version}")
    names = set()
    for path in ("infra/template.yaml", "infra/fleet.yaml"):
        app = load(path).get("Metadata", {}).get("AWS::ServerlessRepo::Application", {})
        check(app.get("SemanticVersion") == version, f"{path} declares version {app.get('SemanticVersion')}, the workspace {version}")
        for key in ("LicenseUrl", "ReadmeUrl"):
            check(os.path.exists(os.path.join(ROOT, "infra", app.get(key, "-"))), f"{path}: {key} {app.get(key)} does not exist")
        names.add(app.get("Name"))
    check(len(names) == 2, f"the two templates' repository entries need names of their own: {names}")


def check_samconfig():
    """`sam build` and `sam deploy` from infra/ work the first time: each environment of samconfig.toml builds a
    template that exists in the source tree (the Makefile needs it) and deploys what it built (a template named
    for deploy would deploy the Makefile's folder as the code), with the capabilities that template needs (IAM
    roles; the nested monitoring application)."""
    import tomllib
    with open(os.path.join(ROOT, "infra", "samconfig.toml"), "rb") as f:
        conf = tomllib.load(f)
    deploys = {env: v["deploy"]["parameters"] for env, v in conf.items() if isinstance(v, dict) and "deploy" in v}
    builds = {env: v.get("build", {}).get("parameters", {}) for env, v in conf.items() if isinstance(v, dict)}
    check({"default", "fleet"} <= set(deploys), f"samconfig.toml deploys {sorted(deploys)}, not default and fleet")
    for env, params in deploys.items():
        check("template_file" not in params, f"samconfig.toml {env}: deploy names a template instead of what sam build built")
        check(builds.get(env, {}).get("build_in_source") is True, f"samconfig.toml {env}: sam build is not in source")
        template = builds.get(env, {}).get("template_file", "")
        check(os.path.exists(os.path.join(ROOT, "infra", template)), f"samconfig.toml {env}: no template {template!r}")
        if not os.path.exists(os.path.join(ROOT, "infra", template)):
            continue
        t = load(f"infra/{template}")
        needed = {"CAPABILITY_IAM"} if any(r["Type"] in ("AWS::Serverless::Function", "AWS::IAM::Role")
                                           for r in t["Resources"].values()) else set()
        if any(r["Type"] == "AWS::Serverless::Application" for r in t["Resources"].values()):
            needed.add("CAPABILITY_AUTO_EXPAND")
        given = set(params.get("capabilities", "").split())
        check(needed <= given, f"samconfig.toml {env}: {template} needs {sorted(needed - given)}")


def check_concurrency():
    """fleet.yaml sizes every function's reserved concurrency from the deployments that may run at once: a hook
    at least one per deployment, the reconciler a follower per deployment and a second during its hand-over."""
    t = load("infra/fleet.yaml")
    allowed = t["Parameters"]["ConcurrentDeployments"]["AllowedValues"]
    table = t["Mappings"]["Concurrency"]
    check(t["Globals"]["Function"].get("ReservedConcurrentExecutions") == {"Fn::FindInMap": ["Concurrency", {"Ref": "ConcurrentDeployments"}, "Hooks"]},
          "fleet.yaml: the hooks' concurrency is not sized by ConcurrentDeployments")
    for n in allowed:
        row = table.get(n, {})
        check(row.get("Hooks", 0) > int(n) and row.get("Reconciler", 0) > 2 * int(n),
              f"fleet.yaml: {n} deployments at once need hooks > {n} and a reconciler > {2 * int(n)}: {row}")


def check_state_table():
    """The state table outlives its stack: retained on delete and replacement, and deletion-protected (for a
    fleet it holds every service's bindings)."""
    for path in ("infra/template.yaml", "infra/fleet.yaml"):
        table = load(path)["Resources"]["StateTable"]
        check(table.get("DeletionPolicy") == "Retain" and table.get("UpdateReplacePolicy") == "Retain"
              and table["Properties"].get("DeletionProtectionEnabled") is True,
              f"{path}: the state table is not retained and deletion-protected")


def check_monitoring():
    """monitoring.yaml alarms and charts only metrics the functions publish, in the namespace they publish in, and
    both installations include it with the namespace they give the functions."""
    import re
    with open(os.path.join(ROOT, "infra", "monitoring.yaml")) as f:
        text = f.read()
    with open(os.path.join(ROOT, "shared", "src", "metrics.rs")) as f:
        code = f.read()
    ours = set(re.findall(r'MetricName=\\"(\w+)\\"', text))
    m = load("infra/monitoring.yaml")
    by_binding = set()
    for name, r in m["Resources"].items():
        if r["Type"] != "AWS::CloudWatch::Alarm":
            continue
        if r["Properties"].get("Namespace") == {"Ref": "MetricsNamespace"}:
            ours.add(r["Properties"]["MetricName"])
        # Metrics Insights alarms over the functions' namespace; grouped by the binding's dimensions, each
        # deployment group is a contributor the notification names.
        for q in r["Properties"].get("Metrics", []):
            sql = q.get("Expression", {}).get("Fn::Sub", "") if isinstance(q.get("Expression"), dict) else ""
            found = re.match(r'SELECT \w+\((\w+)\) FROM SCHEMA\("\$\{MetricsNamespace\}", Application, DeploymentGroup\)'
                             r'\s+GROUP BY Application, DeploymentGroup$', sql.strip())
            if found:
                ours.add(found.group(1))
                by_binding.add(found.group(1))
    check({"HookFailed", "BindingsOutOfSync"} <= by_binding,
          f"monitoring.yaml: the HookFailed and BindingsOutOfSync alarms must name the deployment group (grouped: {sorted(by_binding)})")
    check(len(ours) >= 8, f"monitoring.yaml names only {sorted(ours)} of the functions' metrics")
    for metric in sorted(ours):
        check(f'"{metric}"' in code, f"monitoring.yaml uses {metric}, which shared/src/metrics.rs does not publish")
    default = m["Parameters"]["MetricsNamespace"]["Default"]
    with open(os.path.join(ROOT, "shared", "src", "config.rs")) as f:
        config = f.read()
    check(f'DEFAULT_NAMESPACE: &str = "{default}"' in config, f"monitoring.yaml's namespace {default} is not the code's")
    for path in ("infra/template.yaml", "infra/fleet.yaml"):
        t = load(path)
        mon = t["Resources"].get("Monitoring", {}).get("Properties", {})
        check(mon.get("Location") == "monitoring.yaml", f"{path} does not include monitoring.yaml")
        check(t["Globals"]["Function"]["Environment"]["Variables"].get("BLUEGREEN_MIRROR_METRICS_NAMESPACE")
              == mon.get("Parameters", {}).get("MetricsNamespace"), f"{path}: functions and alarms differ in namespace")
        check(t["Globals"]["Function"].get("LoggingConfig", {}).get("LogFormat") == "JSON", f"{path}: log format is not JSON")
        # Every function's Lambda errors and throttles page someone: each is handed to monitoring.yaml, whose
        # alarms watch both metrics of every function named so.
        passed = {v.get("Ref") for v in mon.get("Parameters", {}).values() if isinstance(v, dict)}
        functions = {k for k, r in t["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
        check(functions <= passed, f"{path}: {sorted(functions - passed)} not handed to the monitoring stack")
    watched = {"Errors": set(), "Throttles": set()}
    for r in m["Resources"].values():
        if r["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = r["Properties"]
        stats = [q["MetricStat"]["Metric"] for q in props.get("Metrics", []) if "MetricStat" in q]
        if props.get("Namespace") == "AWS/Lambda":
            stats.append({"MetricName": props["MetricName"], "Dimensions": props.get("Dimensions", [])})
        for metric in stats:
            for d in metric.get("Dimensions", []):
                if metric.get("MetricName") in watched and d["Name"] == "FunctionName":
                    watched[metric["MetricName"]].add(d["Value"].get("Ref"))
    names = {k for k in m["Parameters"] if k.endswith("FunctionName")}
    for metric, params in watched.items():
        check(names <= params, f"monitoring.yaml: no alarm on the Lambda {metric} of {sorted(names - params)}")


def check_read_lane():
    """The functions that wait in the installation's read lane (AfterInstall, BeforeAllowTraffic; the reconciler
    has UpdateItem on the whole table) may update the lane's item, and only it: the key the code writes."""
    with open(os.path.join(ROOT, "shared", "src", "aws", "dynamodb.rs")) as f:
        key = re.search(r'const LANE_KEY: &str = "([^"]+)";', f.read())
    check(key is not None, "shared/src/aws/dynamodb.rs names no LANE_KEY")
    with open(os.path.join(ROOT, "hooks", "src", "lib.rs")) as f:
        lanes = dict(re.findall(r'(\w+)Hook: \w+ runs \w+, lane (true|false)', f.read()))
    check(lanes == {"AfterInstall": "true", "BeforeAllowTraffic": "true", "AfterAllowTraffic": "false"},
          f"hooks in the read lane: {lanes}")
    for path in ("infra/template.yaml", "infra/fleet.yaml"):
        t = load(path)
        for hook, in_lane in lanes.items():
            statements = t["Resources"][f"{hook}Function"]["Properties"]["Policies"][0]["Statement"]
            lane = [s for s in statements if "dynamodb:UpdateItem" in s["Action"]]
            if in_lane == "true":
                check(len(lane) == 1 and key is not None and lane[0].get("Condition", {}).get("ForAllValues:StringEquals", {})
                      .get("dynamodb:LeadingKeys") == [key.group(1)],
                      f"{path}: {hook} may not update the read lane's item {key and key.group(1)} (or more than it)")
            else:
                check(not lane, f"{path}: {hook} is not in the read lane and needs no UpdateItem")


if __name__ == "__main__":
    sys.exit(main())
