"""IAM in the emulated account: every call a function (or the operator CLI) makes is authorised against the policy
the installation's template gives that principal, as IAM evaluates it, before the call takes effect. moto
authorises nothing, so without this a permission the templates forgot would pass every rehearsal and fail in an
account.

What is modelled is what the templates use:
* the policies themselves, read from the template the scenario deploys (template.yaml, fleet.yaml, operator.yaml)
  with its parameters, conditions and intrinsics resolved (Ref, Fn::Sub, Fn::If, Fn::GetAtt, Fn::Join, Fn::Split,
  Fn::Select, Fn::FindInMap) for the rehearsal's resources;
* IAM's evaluation: an explicit Deny wins, then any Allow, else the implicit deny; `*` and `?` in actions (without
  case) and resources; Action/NotAction, Resource/NotResource; condition operators String*, Arn*, Bool and Null,
  with `...IfExists` and the ForAllValues/ForAnyValue set qualifiers (ForAllValues over a key the request lacks is
  true, as IAM's documentation warns);
* each call's action, resource and condition keys as the Service Authorization Reference gives them: ELB's
  Describe* on `*`, its writes on the target group, listener or rule with `aws:ResourceTag/...`; DynamoDB on the
  table with `dynamodb:LeadingKeys` (a transaction authorised item by item, as the underlying writes);
  CodeDeploy's GetDeployment and GetDeploymentGroup on the deployment group, GetDeploymentConfig on the
  configuration, and on `*` only the three actions the Reference lists no resource type for
  (ListDeploymentTargets, GetDeploymentTarget, PutLifecycleEventHookExecutionStatus); Lambda's Invoke as
  `lambda:InvokeFunction` on the function.

A denied call is answered as the service answers AccessDenied, naming the action and the resource. Every decision
is kept (`Account.decisions`), so that a test can ask which statement each call needed."""

import json
import os
import re
import threading
import urllib.parse

import yaml

ACCOUNT_ID = "123456789012"  # moto's account: every ARN the rehearsal creates carries it
PARTITION = "aws"


class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form intrinsics (!Sub, !Ref, ...) as {"Fn::X": value}."""


def _intrinsic(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path):
    with open(path) as f:
        return yaml.load(f, Loader=CfnLoader)


# --- templates ------------------------------------------------------------------------------------------------
class _NoValue:
    """AWS::NoValue: the element or property disappears."""


NO_VALUE = _NoValue()


class Template:
    """A CloudFormation template with its parameters given: resolves what a resource's properties say.
    `resources` gives what `Ref` and `Fn::GetAtt` of a resource answer (the stack's physical names and ARNs)."""

    def __init__(self, path, params, region, resources=None):
        self.path = path
        self.t = load_template(path)
        self.region = region
        self.resources = resources or {}
        self.params = {}
        for name, spec in self.t.get("Parameters", {}).items():
            if name in params:
                value = params[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                raise ValueError(f"{os.path.basename(path)}: parameter {name} has no value and no default")
            if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
                value = [v.strip() for v in value.split(",")] if value else []
            self.params[name] = value
        unknown = set(params) - set(self.params)
        if unknown:
            raise ValueError(f"{os.path.basename(path)} has no parameter(s) {sorted(unknown)}")
        self.conditions = {}
        for name in self.t.get("Conditions", {}):
            self.condition(name)

    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = bool(self.resolve(self.t["Conditions"][name]))
        return self.conditions[name]

    def ref(self, name):
        pseudo = {"AWS::Region": self.region, "AWS::AccountId": ACCOUNT_ID, "AWS::Partition": PARTITION,
                  "AWS::NoValue": NO_VALUE, "AWS::StackName": "bluegreen-mirror", "AWS::URLSuffix": "amazonaws.com"}
        if name in pseudo:
            return pseudo[name]
        if name in self.params:
            return self.params[name]
        if name in self.resources:
            return self.resources[name]
        raise KeyError(f"{os.path.basename(self.path)}: Ref {name} is neither a parameter nor a known resource")

    def sub(self, text, variables):
        def one(m):
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and name not in self.params:
                return str(self.resolve({"Fn::GetAtt": name.split(".", 1)}))
            value = self.ref(name)
            return ",".join(value) if isinstance(value, list) else str(value)
        return re.sub(r"\$\{([^}]+)\}", one, text)

    def resolve(self, node):
        if isinstance(node, list):
            out = [self.resolve(n) for n in node]
            return [v for v in out if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                return self.function(key[4:], arg)
        out = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def function(self, name, arg):
        if name == "Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
            return self.sub(text, variables)
        if name == "If":
            cond, yes, no = arg
            return self.resolve(yes if self.condition(cond) else no)
        if name == "GetAtt":
            logical, attribute = arg
            key = f"{logical}.{attribute}"
            if key not in self.resources:
                raise KeyError(f"{os.path.basename(self.path)}: Fn::GetAtt {key} is not a known attribute")
            return self.resources[key]
        if name == "Join":
            delimiter, items = self.resolve(arg[0]), self.resolve(arg[1])
            return delimiter.join(str(i) for i in items)
        if name == "Split":
            delimiter, text = self.resolve(arg[0]), self.resolve(arg[1])
            return text.split(delimiter)
        if name == "Select":
            return self.resolve(arg[1])[int(self.resolve(arg[0]))]
        if name == "FindInMap":
            table, first, second = (self.resolve(a) for a in arg)
            return self.t["Mappings"][table][str(first)][str(second)]
        if name == "Equals":
            a, b = (self.resolve(x) for x in arg)
            return a == b
        if name == "Not":
            return not self.resolve(arg[0])
        if name == "And":
            return all(self.resolve(a) for a in arg)
        if name == "Or":
            return any(self.resolve(a) for a in arg)
        raise ValueError(f"{os.path.basename(self.path)}: Fn::{name} is not modelled")

    def function_policies(self, logical_id):
        """The statements a SAM function's role carries from its `Policies` (inline statements only)."""
        props = self.t["Resources"][logical_id]["Properties"]
        statements = []
        for p in props.get("Policies", []):
            if not (isinstance(p, dict) and set(p) == {"Statement"}):
                raise ValueError(f"{logical_id}: only inline policy statements are modelled, not {p!r}")
            statements.extend(self.resolve(p["Statement"]))
        return Policy(statements, f"{os.path.basename(self.path)} {logical_id}")

    def function_concurrency(self, logical_id):
        """A function's reserved concurrency: its own, else the Globals', else None (the account's)."""
        props = self.t["Resources"][logical_id]["Properties"]
        value = props.get("ReservedConcurrentExecutions",
                          self.t.get("Globals", {}).get("Function", {}).get("ReservedConcurrentExecutions"))
        return None if value is None else int(self.resolve(value))

    def function_timeout(self, logical_id):
        """A function's timeout in seconds: its own, else the Globals'."""
        props = self.t["Resources"][logical_id]["Properties"]
        return float(self.resolve(props.get("Timeout", self.t.get("Globals", {}).get("Function", {}).get("Timeout", 3))))

    def managed_policy(self, logical_id):
        return Policy(self.resolve(self.t["Resources"][logical_id]["Properties"]["PolicyDocument"]["Statement"]),
                      f"{os.path.basename(self.path)} {logical_id}")


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def functions_built():
    """The templates' functions and the binary each runs: what infra/build/Makefile builds for each logical id
    (`sam build` runs its target)."""
    with open(os.path.join(ROOT, "infra", "build", "Makefile")) as f:
        return dict(re.findall(r"^build-(\w+): FUNCTION = ([a-z-]+)$", f.read(), re.M))


def single_binding_params(binding, cluster):
    """template.yaml's parameters for a binding (what an operator passes to `sam deploy` for it)."""
    pairs = binding["pairs"]
    params = {"CodeDeployApplication": binding["application"], "CodeDeployDeploymentGroup": binding["deployment_group"],
              "EcsClusterName": cluster,
              "PublicBlueTargetGroupArn": pairs[0]["public_target_group"],
              "PublicGreenTargetGroupArn": pairs[1]["public_target_group"],
              "PrivateBlueTargetGroupArn": pairs[0]["private_target_group"],
              "PrivateGreenTargetGroupArn": pairs[1]["private_target_group"]}
    route = lambda r, listener, rule: {listener: r["listener"]} if "listener" in r else {rule: r["rule"]}  # noqa: E731
    params.update(route(binding["private_production_route"], "PrivateProductionListenerArn", "PrivateProductionRuleArn"))
    if binding.get("private_test_route"):
        params.update(route(binding["private_test_route"], "PrivateTestListenerArn", "PrivateTestRuleArn"))
    sides = binding.get("additional_private_sides", [])
    if len(sides) > 1 or any("rule" in s.get(r, {}) for s in sides for r in ("private_production_route", "private_test_route")):
        raise ValueError("template.yaml takes one more private side, with listener routes: deploy fleet.yaml instead")
    for side in sides:
        params.update({"SecondPrivateBlueTargetGroupArn": side["pairs"][0]["private_target_group"],
                       "SecondPrivateGreenTargetGroupArn": side["pairs"][1]["private_target_group"],
                       "SecondPrivateProductionListenerArn": side["private_production_route"]["listener"]})
        if side.get("private_test_route"):
            params["SecondPrivateTestListenerArn"] = side["private_test_route"]["listener"]
    return params


# --- evaluation -----------------------------------------------------------------------------------------------
def _as_list(v):
    return v if isinstance(v, list) else [v]


def _glob(pattern, value, ignore_case=False):
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.S | (re.I if ignore_case else 0)) is not None


# Condition operators: (how one policy value matches one request value, whether the operator is negated).
_OPERATORS = {
    "StringEquals": (lambda p, v: p == v, False),
    "StringNotEquals": (lambda p, v: p == v, True),
    "StringEqualsIgnoreCase": (lambda p, v: p.lower() == v.lower(), False),
    "StringNotEqualsIgnoreCase": (lambda p, v: p.lower() == v.lower(), True),
    "StringLike": (_glob, False),
    "StringNotLike": (_glob, True),
    "ArnEquals": (lambda p, v: p == v, False),
    "ArnNotEquals": (lambda p, v: p == v, True),
    "ArnLike": (_glob, False),
    "ArnNotLike": (_glob, True),
    "Bool": (lambda p, v: str(p).lower() == str(v).lower(), False),
}


class Request:
    """One authorisation: an action on a resource, with the request's condition keys. `lookup(key)` gives the
    values of a key that needs asking (a resource's tags), or None when the request has no such key."""

    def __init__(self, action, resource, keys=None, lookup=None):
        self.action, self.resource = action, resource
        self.keys = dict(keys or {})
        self.lookup = lookup
        self.lock = threading.Lock()

    def values(self, key):
        with self.lock:
            if key not in self.keys:
                found = self.lookup(key) if self.lookup else None
                self.keys[key] = None if found is None else _as_list(found)
            return self.keys[key]

    def __repr__(self):
        return f"{self.action} on {self.resource}"


def _condition_holds(op, key, wanted, request):
    qualifier, _, base = op.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base[:-len("IfExists")] if if_exists else base
    values = request.values(key)
    wanted = [str(w).lower() if isinstance(w, bool) else str(w) for w in _as_list(wanted)]
    if base == "Null":
        return (values is None) == (wanted[0].lower() == "true")
    if base not in _OPERATORS:
        raise ValueError(f"condition operator {op} is not modelled")
    match, negated = _OPERATORS[base]
    if values is None:
        # A key the request lacks: ForAllValues holds over the empty set, ForAnyValue does not; otherwise the
        # values do not match, so a negated operator holds, and ...IfExists holds.
        if qualifier == "ForAllValues":
            return True
        if qualifier == "ForAnyValue":
            return False
        return if_exists or negated

    def one(v):
        hit = any(match(w, v) for w in wanted)
        return not hit if negated else hit
    if qualifier == "ForAllValues":
        return all(one(v) for v in values)
    if qualifier == "ForAnyValue":
        return any(one(v) for v in values)
    return one(values[0]) if len(values) == 1 else all(one(v) for v in values)


class Policy:
    """A principal's statements, evaluated as IAM does for one account's identity-based policies."""

    def __init__(self, statements, name):
        self.statements = list(statements)
        self.name = name

    def without(self, index):
        """This policy less one statement (what a test removes to see the rehearsal fail)."""
        return Policy(self.statements[:index] + self.statements[index + 1:],
                      f"{self.name} without {self.statements[index].get('Sid', index)}")

    def __add__(self, other):
        return Policy(self.statements + other.statements, f"{self.name} + {other.name}")

    @staticmethod
    def _applies(st, request):
        if "Action" in st:
            if not any(_glob(a, request.action, ignore_case=True) for a in _as_list(st["Action"])):
                return False
        elif any(_glob(a, request.action, ignore_case=True) for a in _as_list(st.get("NotAction", []))):
            return False
        if "Resource" in st:
            if not any(_glob(r, request.resource) for r in _as_list(st["Resource"])):
                return False
        elif any(_glob(r, request.resource) for r in _as_list(st.get("NotResource", []))):
            return False
        for op, keys in st.get("Condition", {}).items():
            for key, wanted in keys.items():
                if not _condition_holds(op, key, wanted, request):
                    return False
        return True

    def decide(self, request):
        """(allowed, the statements that allowed it, or the one that denied it)."""
        matched = [st for st in self.statements if self._applies(st, request)]
        denied = [st for st in matched if st.get("Effect") == "Deny"]
        if denied:
            return False, denied
        allowed = [st for st in matched if st.get("Effect") == "Allow"]
        return bool(allowed), allowed


# --- the rehearsal's calls as IAM sees them -------------------------------------------------------------------
def _arn(service, region, resource):
    return f"arn:{PARTITION}:{service}:{region}:{ACCOUNT_ID}:{resource}"


def _ddb_keys(item):
    return [v.get("S", v.get("N", v.get("B", ""))) for v in item.values()]


class Account:
    """The account's IAM: principals (access key → policy) and every decision made. Callers with no policy (the
    rehearsal's own ECS, CodeDeploy and provisioning, the neighbour) are not authorised here."""

    def __init__(self, region, tags_of, group_of_deployment, partition_key="pk"):
        self.region = region
        self.tags_of = tags_of  # callable(ELB ARN) -> {key: value}
        self.group_of_deployment = group_of_deployment  # callable(deployment id) -> (application, group) or None
        self.partition_key = partition_key
        self.principals = {}  # access key -> (name, Policy)
        self.decisions = []  # (principal, policy name, Request, allowed, Sids that allowed or denied)
        self.lock = threading.Lock()

    def grant(self, access_key, name, policy):
        with self.lock:
            self.principals[access_key] = (name, policy)

    def requests(self, service, op, form, body, path):
        """What IAM authorises for one call: a list of Request (a transaction is one per item)."""
        if service == "elbv2":
            def tags(key, arn):
                if not key.startswith("aws:ResourceTag/"):
                    return None
                return self.tags_of(arn).get(key.split("/", 1)[1])
            arn = "*"
            if op in ("RegisterTargets", "DeregisterTargets", "ModifyTargetGroup", "ModifyTargetGroupAttributes"):
                arn = form.get("TargetGroupArn", ["*"])[0]
            elif op in ("ModifyListener", "DeleteListener", "CreateRule"):
                arn = form.get("ListenerArn", ["*"])[0]
            elif op in ("ModifyRule", "DeleteRule"):
                arn = form.get("RuleArn", ["*"])[0]
            elif op in ("AddTags", "RemoveTags"):
                return [Request(f"elasticloadbalancing:{op}", a, lookup=lambda k, a=a: tags(k, a))
                        for k, [a] in sorted(form.items()) if k.startswith("ResourceArns.member.")]
            elif not op.startswith("Describe"):
                raise ValueError(f"the rehearsal's IAM does not know the resource of elasticloadbalancing:{op}")
            return [Request(f"elasticloadbalancing:{op}", arn,
                            lookup=None if arn == "*" else (lambda k: tags(k, arn)))]
        if service == "dynamodb":
            req = json.loads(body or b"{}")
            table = lambda name: _arn("dynamodb", self.region, f"table/{name}")  # noqa: E731

            def item_request(action, table_name, key):
                leading = [v for k, v in zip(key, _ddb_keys(key)) if k == self.partition_key]
                return Request(f"dynamodb:{action}", table(table_name), {"dynamodb:LeadingKeys": leading or None})
            if op in ("GetItem", "DeleteItem", "UpdateItem"):
                return [item_request(op, req.get("TableName", ""), req.get("Key", {}))]
            if op == "PutItem":
                return [item_request(op, req.get("TableName", ""), req.get("Item", {}))]
            if op == "TransactWriteItems":
                out = []
                for entry in req.get("TransactItems", []):
                    (kind, spec), = entry.items()
                    action = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                              "ConditionCheck": "ConditionCheckItem"}[kind]
                    out.append(item_request(action, spec.get("TableName", ""), spec.get("Item", spec.get("Key", {}))))
                return out
            if op == "BatchGetItem":
                return [item_request("BatchGetItem", name, key) for name, spec in req.get("RequestItems", {}).items()
                        for key in spec.get("Keys", [])]
            if op in ("Scan", "DescribeTable", "DescribeTimeToLive"):
                return [Request(f"dynamodb:{op}", table(req.get("TableName", "")))]
            raise ValueError(f"the rehearsal's IAM does not know the resource of dynamodb:{op}")
        if service == "codedeploy":
            req = json.loads(body or b"{}")
            group = lambda app, g: _arn("codedeploy", self.region, f"deploymentgroup:{app}/{g}")  # noqa: E731
            if op == "GetDeploymentGroup":
                arn = group(req.get("applicationName", ""), req.get("deploymentGroupName", ""))
            elif op == "GetDeployment":
                # Authorised on the deployment's group, which IAM knows from the deployment; an unknown deployment
                # has no group, and only a statement on every group can allow the call (which then fails as the
                # service says).
                owner = self.group_of_deployment(req.get("deploymentId", ""))
                arn = group(*owner) if owner else "*"
            elif op == "GetDeploymentConfig":
                arn = _arn("codedeploy", self.region, f"deploymentconfig:{req.get('deploymentConfigName', '')}")
            elif op in ("ListDeploymentTargets", "GetDeploymentTarget", "PutLifecycleEventHookExecutionStatus"):
                arn = "*"
            else:
                raise ValueError(f"the rehearsal's IAM does not know the resource of codedeploy:{op}")
            return [Request(f"codedeploy:{op}", arn)]
        if service == "lambda":
            name = urllib.parse.unquote(path.split("/")[3])
            arn = name if name.startswith("arn:") else _arn("lambda", self.region, f"function:{name}")
            return [Request("lambda:InvokeFunction", arn)]
        raise ValueError(f"the rehearsal's IAM does not model {service}")

    def refuse(self, caller, service, op, form, body, path):
        """None when the caller may make this call (or is not a principal here); else the AccessDenied message."""
        with self.lock:
            principal = self.principals.get(caller)
        if principal is None:
            return None
        name, policy = principal
        try:
            requests = self.requests(service, op, form, body, path)
        except ValueError as e:
            # A call the model cannot place is refused loudly rather than waved through.
            with self.lock:
                self.decisions.append((name, policy.name, Request(f"{service}:{op}", "?"), False, []))
            return f"{e} (tests/rehearsal/iam.py)"
        for request in requests:
            allowed, statements = policy.decide(request)
            with self.lock:
                self.decisions.append((name, policy.name, request, allowed, [st.get("Sid", "?") for st in statements]))
            if not allowed:
                why = ("with an explicit deny in an identity-based policy" if statements
                       else "because no identity-based policy allows the " + request.action + " action")
                return (f"User: arn:aws:sts::{ACCOUNT_ID}:assumed-role/{name}-role/{name} is not authorized to "
                        f"perform: {request.action} on resource: {request.resource} {why}")
        return None

    def report(self):
        """What a rehearsal's report says of IAM: the calls authorised, the refusals, and each distinct decision as
        [policy, action, resource, allowed, the statements (Sids) that allowed or denied it, how many times] (what
        test_iam.py reads to find the statements no call needed)."""
        with self.lock:
            decisions = list(self.decisions)
        seen = {}
        for _name, policy, r, ok, sids in decisions:
            key = (policy, r.action, r.resource, ok, tuple(sids))
            seen[key] = seen.get(key, 0) + 1
        return {"calls_authorised": len(decisions),
                "refused": [{"principal": w, "action": a, "resource": r} for w, a, r in self.denied()],
                "decisions": [[*k[:4], list(k[4]), n] for k, n in sorted(seen.items())]}

    def denied(self):
        """Every refusal so far: (principal name, action, resource)."""
        with self.lock:
            return [(name, r.action, r.resource) for name, _policy, r, ok, _ in self.decisions if not ok]


def report_of(account):
    """An account's IAM report (Account.report), or an empty one when IAM was never switched on."""
    return account.report() if account else {"calls_authorised": 0, "refused": [], "decisions": []}
