"""The emulated AWS the hooks talk to. One HTTP endpoint on 127.0.0.1 (every `AWS_ENDPOINT_URL*` points here):

* CodeDeploy (JSON protocol) is answered here, from the deployment the rehearsal is playing (codedeploy.py):
  GetDeployment, GetDeploymentGroup, GetDeploymentConfig, ListDeploymentTargets, GetDeploymentTarget,
  PutLifecycleEventHookExecutionStatus.
* ELBv2 `DescribeTargetHealth` is answered here from real HTTP health checks of the task processes, per load
  balancer, the way an ALB does it, on each group's own timing (`TIME_SCALE`): `initial` until its healthy
  threshold of checks at its interval, `healthy`, `unhealthy`, `draining` for its deregistration delay after a
  deregistration, `unused` where no listener or rule routes to the group.
* ELBv2 throttles as ELB does (`ElbBuckets`): token buckets per account and region, shared by every caller in the
  account (our functions, a neighbour, the console), except the AWS services that call ELB on the customer's behalf
  (ECS, CodeDeploy), which have buckets of their own. moto throttles nothing.
* NLBs are spelled and refused as ELB does (`NlbSpelling`): moto names every load balancer `loadbalancer/app/...`
  and accepts a forward to several target groups on an NLB listener; ELB names an NLB `loadbalancer/net/...` (its
  listeners `listener/net/...`) and refuses such a forward with `ValidationError`. An NLB group whose health
  check is TCP is checked by opening a connection, as an NLB does.
* IAM is enforced (`iam.Account`): each function's call is authorised against the policy its template grants it,
  and refused with the service's AccessDenied when IAM would refuse it. moto authorises nothing.
* Everything else (ELBv2, DynamoDB, EC2) passes through to moto unchanged.

Every call is counted per caller (the access key id of the signing credentials names the function) and per
operation, and every listener or rule change is recorded with its time, so that the report can show the flip
skew between the public and the private side."""

import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from codedeploy import codedeploy_answer
from scenarios import TIME_SCALE


class QuietServer(ThreadingHTTPServer):
    """A client that goes away mid-request (a killed function, a finished probe) is not an error here."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        pass

ELB_NS = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"

# What a group that says nothing has, as ELB's defaults: interval 30 s, healthy after 5 checks, unhealthy after 2,
# a 300 s drain.
DEFAULT_TIMING = (30.0, 5, 2, 300.0)
DEREGISTRATION_DELAY_S = DEFAULT_TIMING[3] * TIME_SCALE
# An NLB's data plane lags its configuration: ECS's own blue/green waits 10 minutes at each NLB traffic shift because
# "timing issues ... can cause a mismatch between the configured traffic weights and the actual traffic routing in
# the data plane" (ECS developer guide, "Network Load Balancer resources for blue/green deployments"). The probe
# routes an NLB listener's requests by its route as it stood this long ago (10 minutes, scaled).
NLB_SETTLE_S = 600 * TIME_SCALE
# How often the endpoint checks every target: each group's own interval (scaled) is far shorter than a real check,
# so a target's state moves by elapsed time (`GroupTiming`) and this is only the resolution.
HEALTH_INTERVAL_S = 0.25
# How long a `timeout` fault holds a request unanswered when the caller does not give up first.
TIMEOUT_FAULT_HOLD_S = 60.0


# What ELB says alongside each reason code.
DESCRIPTIONS = {
    "Elb.RegistrationInProgress": "Target registration is in progress",
    "Target.Timeout": "Request timed out",
    "Target.FailedHealthChecks": "Health checks failed",
    "Target.NotInUse": "Target group is not configured to receive traffic from the load balancer",
    "Target.DeregistrationInProgress": "Target deregistration is in progress",
}


class Faults:
    """Faults injected into the functions' calls (never into the rehearsal's own): per service, or per service and
    operation (a trailing `*` matches a prefix), one kind with a rate, all the time or for a window.
    `elbv2=throttle:0.3,dynamodb=5xx:0.1,codedeploy=reset:0.05,lambda=latency:200`, `elbv2.RegisterTargets=denied:1`;
    `*` is every service. `@PHASE+SECONDS` after the rate confines a rule to SECONDS (real ones, as the SDK's and the
    functions' own waits are) from the moment the rehearsal's timeline first reaches PHASE: an outage,
    `elbv2.Describe*=throttle:1@BeforeAllowTraffic+30` (ELB's reads refused for 30 s from the gate's invocation).
    Kinds: `throttle` (the service's real throttling error), `5xx` (a server error), `reset` (the connection is
    dropped without an answer), `timeout` (the call is never answered: the caller's own timeout must fire),
    `latency` (milliseconds added to every call), `denied` (the service's AccessDenied: a permission missing from
    the function's role)."""

    KINDS = ("throttle", "5xx", "reset", "timeout", "latency", "denied")
    SERVICES = ("elbv2", "dynamodb", "codedeploy", "lambda", "*")

    def __init__(self, spec=""):
        self.rules = []  # (service, operation or prefix*, kind, value, (phase, seconds) or None)
        self.phases = {}  # phase -> when the timeline first reached it
        self.injected = {}
        self.moments = []  # (t, what) of each fault injected, for the picture
        self.lock = threading.Lock()
        self.random = __import__("random").Random(11)
        for part in filter(None, (p.strip() for p in spec.split(","))):
            where, _, rest = part.partition("=")
            service, _, operation = where.partition(".")
            rest, _, window = rest.partition("@")
            kind, _, value = rest.partition(":")
            phase, _, seconds = window.partition("+")
            try:
                number = float(value)
                span = (phase, float(seconds)) if window else None
            except ValueError:
                number, span = -1.0, None
            if (service not in self.SERVICES or kind not in self.KINDS or number < 0
                    or (kind != "latency" and number > 1) or (operation and not operation.rstrip("*").isalnum())
                    or (window and (span is None or not phase.isalnum() or span[1] <= 0))):
                raise ValueError(f"bad fault {part!r}: expected SERVICE[.Operation]=KIND:RATE[@PHASE+SECONDS] with "
                                 f"SERVICE in {self.SERVICES}, KIND in {self.KINDS}, RATE in 0..1 (milliseconds for "
                                 f"latency)")
            self.rules.append((service, operation, kind, number, span))

    def phase_started(self, phase):
        """The rehearsal's timeline reached `phase` (its first time starts the windows that name it)."""
        with self.lock:
            self.phases.setdefault(phase, time.monotonic())

    def _applies(self, rule, service, op, now):
        r_service, r_op, _kind, _value, span = rule
        if r_service not in ("*", service):
            return False
        if r_op and not (op == r_op or (r_op.endswith("*") and op.startswith(r_op[:-1]))):
            return False
        if span is None:
            return True
        started = self.phases.get(span[0])
        return started is not None and started <= now < started + span[1]

    def pick(self, caller, service, op=""):
        """The faults to apply to this call: a list of (kind, value)."""
        if not caller.startswith("AKID"):
            return []
        out = []
        now = time.monotonic()
        with self.lock:
            # Each call draws on its own: at a rate, any number of faults in a row can come, as they do from AWS.
            for _s, _o, kind, value, span in (r for r in self.rules if self._applies(r, service, op, now)):
                if kind == "latency" or self.random.random() < value:
                    out.append((kind, value))
                    self.injected[f"{service}:{kind}"] = self.injected.get(f"{service}:{kind}", 0) + 1
                    if kind != "latency" and len(self.moments) < 500:
                        self.moments.append((time.monotonic(), f"{service} {op}: {kind}"))
        return out


def fault_response(service, kind, op="", denied=None):
    """(status, body, content type, extra headers) of an injected error, in the service's own error shape.
    `denied`: IAM's message for an AccessDenied (iam.Account's), else a generic one naming the action."""
    # IAM's name of the action: the ELB API is `elasticloadbalancing`, Lambda's Invoke is `InvokeFunction`.
    action = {"elbv2": "elasticloadbalancing", "ec2": "ec2"}.get(service, service) + ":" + (
        "InvokeFunction" if service == "lambda" else op)
    denied = denied or (f"User: arn:aws:sts::123456789012:assumed-role/fn/fn is not authorized to perform: {action} "
                        f"because no identity-based policy allows the {action} action")
    if service in ("elbv2", "ec2"):
        code, status, message = {
            "throttle": ("Throttling", 400, "Rate exceeded"),
            "denied": ("AccessDenied", 403, denied),
        }.get(kind, ("ServiceUnavailable", 503, "Service unavailable"))
        body = (f'<ErrorResponse xmlns="{ELB_NS}"><Error><Type>{"Receiver" if status >= 500 else "Sender"}</Type>'
                f"<Code>{code}</Code><Message>{message}</Message></Error>"
                f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")
        return status, body.encode(), "text/xml", {}
    if service == "lambda":
        code, status, message = {"throttle": ("TooManyRequestsException", 429, "Rate exceeded"),
                                 "denied": ("AccessDeniedException", 403, denied)}.get(kind, ("ServiceException", 500, "Internal error"))
        return status, json.dumps({"message": message}).encode(), "application/json", {"X-Amzn-ErrorType": code}
    prefix = "com.amazonaws.dynamodb.v20120810#" if service == "dynamodb" else ""
    code, status, message = {"throttle": ("ThrottlingException", 400, "Rate exceeded"),
                             "denied": ("AccessDeniedException", 400, denied)
                             }.get(kind, ("InternalServerError", 500, "Internal error"))
    body = json.dumps({"__type": prefix + code, "message": message})
    return status, body.encode(), "application/x-amz-json-1.1", {"X-Amzn-ErrorType": code}


# ELB's request-rate buckets, per account and region (ELB user guide, "Request throttling for the ELB API",
# https://docs.aws.amazon.com/elasticloadbalancing/latest/userguide/elb-api-throttling.html, as revised in March
# 2026; the AWS Load Balancer Controller's default client-side limits were set to the same figures on 2026-03-24/25,
# kubernetes-sigs/aws-load-balancer-controller PR 4641 and commit 312f2be): (capacity, refill per second).
#   describe      every Describe* action                                   200 tokens, 50 a second
#   registration  RegisterTargets and DeregisterTargets                     20 tokens,  4 a second
#   mutating      every other mutating action (ModifyListener, ModifyRule)  20 tokens,  3 a second
ELB_BUCKETS = {"describe": (200.0, 50.0), "registration": (20.0, 4.0), "mutating": (20.0, 3.0)}
# The stress setting (`--elb-buckets tight`): the page's Describe* figures before March 2026 (40 tokens, 10 a
# second) and every mutating action at 10 tokens, 2 a second. A design that holds under it holds under the page.
TIGHT_ELB_BUCKETS = {"describe": (40.0, 10.0), "registration": (10.0, 2.0), "mutating": (10.0, 2.0)}
BUCKET_SETTINGS = {"current": ELB_BUCKETS, "tight": TIGHT_ELB_BUCKETS}
# Callers whose ELB calls are made on the customer's behalf by an AWS service (the rehearsal's ECS and CodeDeploy):
# "services such as ECS ... have their own account-level buckets and do not consume tokens from your buckets".
ON_BEHALF = ("CODEDEPLOY", "STANDIN", "PROVISION")


def elb_bucket(op):
    """Which of ELB's buckets an action draws on."""
    if op.startswith("Describe"):
        return "describe"
    if op in ("RegisterTargets", "DeregisterTargets"):
        return "registration"
    return "mutating"


class ElbBuckets:
    """ELB's token buckets for one account: every request takes one token from its action's bucket, or is refused
    with `Throttling` (HTTP 400, "Rate exceeded") when the bucket is empty. A throttled request costs no token.
    The ELB guide names the error `ThrottlingException`; on the wire ELB's query API sends the code `Throttling`,
    type `Sender` (what the SDKs report, e.g. "An error occurred (Throttling) when calling the
    DescribeTargetHealth operation: Rate exceeded"), and the SDKs treat both as throttling.
    Counts what each caller was granted and refused, per bucket."""

    def __init__(self, figures=None, clock=time.monotonic):
        self.figures = dict(figures or ELB_BUCKETS)
        self.clock = clock
        self.tokens = {k: cap for k, (cap, _) in self.figures.items()}
        self.at = {k: clock() for k in self.figures}
        self.throttled = {}  # caller -> {bucket: n}
        self.lock = threading.Lock()
        self.enabled = True

    def take(self, caller, op):
        """True when the call may proceed; False when ELB would throttle it."""
        if not self.enabled or caller in ON_BEHALF:
            return True
        bucket = elb_bucket(op)
        cap, rate = self.figures[bucket]
        with self.lock:
            now = self.clock()
            self.tokens[bucket] = min(cap, self.tokens[bucket] + (now - self.at[bucket]) * rate)
            self.at[bucket] = now
            if self.tokens[bucket] >= 1.0:
                self.tokens[bucket] -= 1.0
                return True
            per = self.throttled.setdefault(caller, {})
            per[bucket] = per.get(bucket, 0) + 1
            return False


class Neighbour:
    """Another client in the same account reading ELB at a steady rate (the console, Terraform, monitoring): it
    spends the account's `Describe*` budget like our functions do, and counts the throttles it suffers. It calls
    through the emulated endpoint with its own access key and never retries."""

    KEY = "NEIGHBOUR"

    def __init__(self, endpoint, region, target_groups, per_s=4.0):
        import boto3
        from botocore.config import Config as BotoConfig
        self.client = boto3.client("elbv2", endpoint_url=endpoint, region_name=region, aws_access_key_id=self.KEY,
                                   aws_secret_access_key="rehearsal",
                                   config=BotoConfig(retries={"max_attempts": 1, "mode": "standard"}))
        self.target_groups = list(target_groups)
        self.per_s = per_s
        self.calls = 0
        self.throttles = 0
        self.errors = 0
        self.stop = threading.Event()

    def run(self):
        period = 1.0 / self.per_s
        nxt = time.monotonic()
        i = 0
        while not self.stop.is_set():
            tg = self.target_groups[i % len(self.target_groups)]
            i += 1
            self.call(lambda: self.client.describe_target_health(TargetGroupArn=tg))
            nxt += period
            self.stop.wait(max(0.0, nxt - time.monotonic()))

    def call(self, request):
        """Makes one call, counting it and what it suffered."""
        try:
            request()
        except Exception as e:  # noqa: BLE001 - a neighbour only counts what it suffers
            code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
            if code in ("Throttling", "ThrottlingException"):
                self.throttles += 1
            else:
                self.errors += 1
        self.calls += 1

    def start(self):
        threading.Thread(target=self.run, daemon=True).start()
        return self

    def write_every(self, rule_arn, every_s):
        """Also changes a rule of its own every `every_s` (a tool writing the shared load balancer's rules): one
        `ModifyRule` from the account's `Modify*` bucket each time, its throttles counted with its reads'."""
        def run():
            n = 0
            while not self.stop.wait(every_s):
                n += 1
                fixed = {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404" if n % 2 else "410"}}
                self.call(lambda: self.client.modify_rule(RuleArn=rule_arn, Actions=[fixed]))
        threading.Thread(target=run, daemon=True).start()
        return self


class NlbSpelling:
    """ELB's spelling of NLB ARNs over moto's. The world and the rehearsal keep moto's spelling (`app/`); callers
    of the endpoint see and send ELB's (`net/`), translated at the boundary in both directions."""

    KINDS = ("loadbalancer", "listener", "listener-rule")

    def __init__(self):
        self.ids = set()  # "name/id" of every NLB
        self.lock = threading.Lock()

    def add(self, moto_lb_arn):
        with self.lock:
            self.ids.add(moto_lb_arn.split(":loadbalancer/app/", 1)[1])

    def is_nlb(self, arn):
        with self.lock:
            ids = set(self.ids)
        return any(f"/app/{i}" in arn or f"/net/{i}" in arn for i in ids)

    def _swap(self, text, old, new):
        with self.lock:
            ids = set(self.ids)
        for i in ids:
            for kind in self.KINDS:
                text = text.replace(f":{kind}/{old}/{i}", f":{kind}/{new}/{i}")
        return text

    def real(self, text):
        """moto's spelling → ELB's."""
        return self._swap(text, "app", "net")

    def moto(self, text):
        """ELB's spelling → moto's."""
        return self._swap(text, "net", "app")

    def refusal(self, op, form):
        """ELB's answer to a forward to several target groups on an NLB listener, or None. `form` is moto-spelled."""
        if op not in ("ModifyListener", "CreateListener"):
            return None
        owner = form.get("ListenerArn", form.get("LoadBalancerArn", [""]))[0]
        if not self.is_nlb(owner):
            return None
        per_action = {}
        for key in form:
            if ".ForwardConfig.TargetGroups.member." in key and key.endswith(".TargetGroupArn"):
                action = key.split(".ForwardConfig.", 1)[0]
                per_action[action] = per_action.get(action, 0) + 1
        if any(n > 1 for n in per_action.values()):
            return ("You cannot specify multiple target groups in a single action with a load balancer of type "
                    "'network'")
        return None


class World:
    """Shared state of the emulated AWS: routes, target health, draining, blocked paths, call counts."""

    def __init__(self, moto_url, elb_client):
        self.moto_url = moto_url
        self.elb = elb_client  # a boto3 client straight to moto (not counted)
        self.lock = threading.RLock()
        self.routes = {}  # listener/rule ARN -> [(tg, weight)]
        self.route_owner = {}  # listener/rule ARN -> load balancer ARN
        self.route_events = []  # (t, arn, route)
        # How long an NLB listener's change takes to reach its data plane (the probe routes by the route then).
        self.nlb_settle_s = NLB_SETTLE_S
        self.members = {}  # tg -> [(ip, port)] registered in moto
        self.health = {}  # (tg, ip, port) -> dict(state, ok_since, fail_since, reason)
        self.timings = {}  # tg -> (interval s, healthy threshold, unhealthy threshold, drain s), as AWS gives them
        self.health_events = []  # (t, tg, ip, state): each target's registration, drain and change of state
        self.draining = {}  # (tg, ip, port) -> until (monotonic)
        self.blocked = set()  # (lb ARN, ip): that load balancer cannot reach that task
        self.tg_lb = {}  # tg -> lb ARN (from moto)
        self.tcp_checked = set()  # target groups whose health check is TCP: a connection, not an HTTP request
        self.nlb = NlbSpelling()
        self.calls = []  # (t, caller, service, operation)
        self.deployments = {}
        self.groups = {}  # (application, group) -> DeploymentGroup
        self.invoke = None  # callable(function, payload, access_key): Lambda's asynchronous Invoke
        # callable(caller, token, service, op) -> None, or a callable that crashes the caller: it runs once the
        # call has taken effect, and its answer is never sent (crash injection).
        self.on_call = None
        self.calls_by_token = {}  # session token (one per Lambda attempt) -> number of calls
        self.ops_by_token = {}  # session token -> its calls as "service Operation", in order
        self.elb_calls = []  # (t, caller, operation, session token, throttled)
        self.faults = Faults()
        # IAM (iam.Account): every call of a principal it knows is authorised before it takes effect; None, nobody.
        self.iam = None
        self.buckets = ElbBuckets()
        self.health_interval_s = HEALTH_INTERVAL_S
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        # Benchmarks with thousands of targets and no task processes switch real health checks off: every
        # registered target then passes.
        self.active_checks = True
        # AWS's round trip (seconds), off by default. moto answers on this machine's CPU, so concurrent calls queue
        # behind one another and a call costs what moto spends on it; AWS answers each call after a network round
        # trip and its own service time, concurrent calls from one client overlapping. With a round trip set, no
        # call is answered sooner than that after it arrived (the wait holds no lock and no CPU, so concurrent
        # calls wait together), and the first call on a connection waits two round trips more: the TCP and TLS
        # handshakes a new HTTPS connection to an AWS endpoint costs. The benchmarks compare the hooks with it
        # set as well as without.
        self.rtt_s = 0.0

    # --- routes -------------------------------------------------------------------------------------------
    def track_route(self, arn, lb_arn):
        with self.lock:
            self.route_owner[arn] = lb_arn
        self.refresh_route(arn)

    def refresh_route(self, arn):
        if ":listener-rule/" in arn:
            actions = self.elb.describe_rules(RuleArns=[arn])["Rules"][0]["Actions"]
        else:
            actions = self.elb.describe_listeners(ListenerArns=[arn])["Listeners"][0]["DefaultActions"]
        route = []
        for a in actions:
            if a.get("Type") != "forward":
                continue
            fc = a.get("ForwardConfig", {}).get("TargetGroups")
            if fc:
                route = [(t["TargetGroupArn"], int(t.get("Weight", 1))) for t in fc]
            elif a.get("TargetGroupArn"):
                route = [(a["TargetGroupArn"], 1)]
        with self.lock:
            if self.routes.get(arn) != route:
                self.routes[arn] = route
                self.route_events.append((time.monotonic(), arn, route))

    def route(self, arn):
        with self.lock:
            return list(self.routes.get(arn, []))

    def serving_route(self, arn):
        """The route requests arriving now take: the configured one, or for an NLB listener the one configured
        `nlb_settle_s` ago (its first route until it has been tracked that long)."""
        if not (self.nlb_settle_s and self.nlb.is_nlb(arn)):
            return self.route(arn)
        then = time.monotonic() - self.nlb_settle_s
        with self.lock:
            events = [(t, r) for t, a, r in self.route_events if a == arn]
        past = [r for t, r in events if t <= then]
        return list(past[-1] if past else events[0][1] if events else self.routes.get(arn, []))

    def attached(self, tg):
        """Load balancers that route to `tg` (any weight): only those health-check it."""
        with self.lock:
            return {self.route_owner[a] for a, r in self.routes.items() if any(t == tg for t, _ in r)}

    # --- targets and health -------------------------------------------------------------------------------
    def refresh_members(self, only=None):
        """Re-reads registered targets from moto: of `only` (the groups a call just changed or asks about), or of
        every group (the health loop's occasional safety net; every write passes through here and is seen)."""
        with self.lock:
            tgs = set(self.tg_lb) if only is None else set(only) & set(self.tg_lb)
        for tg in tgs:
            desc = self.elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
            self.set_members(tg, [(d["Target"]["Id"], int(d["Target"]["Port"])) for d in desc])

    def set_members(self, tg, members):
        """Records the targets moto says are registered in `tg` (a group the stand-in does not know is ignored)."""
        with self.lock:
            if tg in self.tg_lb:
                self.members[tg] = members

    def timing(self, tg):
        """A group's health check interval, thresholds and deregistration delay, read from moto once (and again
        after a change through the endpoint), ELB's defaults where it has none."""
        with self.lock:
            if tg in self.timings:
                return self.timings[tg]
        interval, healthy, unhealthy, drain = DEFAULT_TIMING
        try:
            g = self.elb.describe_target_groups(TargetGroupArns=[tg])["TargetGroups"][0]
            attributes = {a["Key"]: a["Value"] for a in
                          self.elb.describe_target_group_attributes(TargetGroupArn=tg)["Attributes"]}
            interval = float(g.get("HealthCheckIntervalSeconds") or interval)
            healthy = int(g.get("HealthyThresholdCount") or healthy)
            unhealthy = int(g.get("UnhealthyThresholdCount") or unhealthy)
            drain = float(attributes.get("deregistration_delay.timeout_seconds", drain))
        except Exception:  # noqa: BLE001 - a group moto cannot describe (yet) is timed as ELB's default
            pass
        with self.lock:
            self.timings[tg] = (interval, healthy, unhealthy, drain)
        return self.timings[tg]

    def drain_s(self, tg):
        """How long a target deregistered from `tg` keeps draining here (its deregistration delay, scaled)."""
        return self.timing(tg)[3] * TIME_SCALE

    def on_register(self, tg, targets):
        with self.lock:
            for ip, port in targets:
                self.draining.pop((tg, ip, port), None)
                h = self.health.get((tg, ip, port))
                if h is None or h["state"] in ("draining", "unused"):
                    self.health[(tg, ip, port)] = fresh_health()
                    self.health_events.append((time.monotonic(), tg, ip, "initial"))

    def on_deregister(self, tg, targets):
        drain = self.drain_s(tg)
        with self.lock:
            for ip, port in targets:
                if (ip, port) in self.members.get(tg, []):
                    self.draining[(tg, ip, port)] = time.monotonic() + drain
                    self.health_events.append((time.monotonic(), tg, ip, "draining"))
                self.health.pop((tg, ip, port), None)

    def check_once(self):
        self.rounds = getattr(self, "rounds", 0) + 1
        if self.rounds % 10 == 1:
            self.refresh_members()
        with self.lock:
            groups = list(self.members)
        timing = {tg: self.timing(tg) for tg in groups}
        now = time.monotonic()
        with self.lock:
            for k, until in list(self.draining.items()):
                if until <= now:
                    del self.draining[k]
            work = []
            for tg, members in self.members.items():
                lbs = self.attached(tg)
                for ip, port in members:
                    key = (tg, ip, port)
                    h = self.health.setdefault(key, fresh_health())
                    if not lbs:
                        h.update(state="unused", ok_since=None, fail_since=None, reason="Target.NotInUse")
                        continue
                    if h["state"] == "unused":
                        h.update(state="initial", reason="Elb.RegistrationInProgress")
                    work.append((key, any((lb, ip) in self.blocked for lb in lbs)))
        results = []
        for (tg, ip, port), blocked in work:
            ok = not self.active_checks
            if self.active_checks and not blocked and tg in self.tcp_checked:
                try:
                    socket.create_connection((ip, port), timeout=0.2).close()
                    ok = True
                except OSError:
                    ok = False
            elif self.active_checks and not blocked:
                try:
                    with urllib.request.urlopen(f"http://{ip}:{port}/health", timeout=0.2) as r:
                        ok = r.status == 200
                except (OSError, urllib.error.URLError):
                    ok = False
            results.append(((tg, ip, port), ok, blocked))
        # ELB marks a target healthy after its group's healthy threshold of checks in a row, one interval apart
        # (unhealthy likewise): here, once the checks have passed (failed) for that many intervals less one,
        # scaled, the first check of the run counting as the first of the threshold.
        now = time.monotonic()
        with self.lock:
            for key, ok, blocked in results:
                h = self.health.get(key)
                if h is None or key[0] not in timing:
                    continue
                interval, healthy, unhealthy, _ = timing[key[0]]
                if ok:
                    h["fail_since"] = None
                    h["ok_since"] = h["ok_since"] or now
                    if now - h["ok_since"] >= (healthy - 1) * interval * TIME_SCALE and h["state"] != "healthy":
                        h.update(state="healthy", reason=None)
                        self.health_events.append((now, key[0], key[1], "healthy"))
                else:
                    h["ok_since"] = None
                    h["fail_since"] = h["fail_since"] or now
                    if now - h["fail_since"] >= (unhealthy - 1) * interval * TIME_SCALE and h["state"] != "unhealthy":
                        h.update(state="unhealthy",
                                 reason="Target.Timeout" if blocked else "Target.FailedHealthChecks")
                        self.health_events.append((now, key[0], key[1], "unhealthy"))

    def health_loop(self):
        while not self.stop.is_set():
            try:
                self.check_once()
            except Exception as e:  # a failed round is retried; moto may be busy
                self.last_health_error = repr(e)
            self.stop.wait(self.health_interval_s)

    def target_states(self, tg):
        """What DescribeTargetHealth answers: registered targets with their state, plus draining ones."""
        with self.lock:
            out = []
            for ip, port in self.members.get(tg, []):
                h = self.health.get((tg, ip, port), {"state": "initial", "reason": "Elb.RegistrationInProgress"})
                out.append((ip, port, h["state"], h.get("reason")))
            for (t, ip, port), _until in self.draining.items():
                if t == tg and (ip, port) not in self.members.get(tg, []):
                    out.append((ip, port, "draining", "Target.DeregistrationInProgress"))
            return out

    def routable(self, tg):
        """The targets a load balancer would send a new request to: healthy ones, or all registered (fail
        open) when none is healthy. Empty means no target at all."""
        states = [s for s in self.target_states(tg) if s[2] != "draining"]
        healthy = [(ip, port) for ip, port, st, _ in states if st == "healthy"]
        return healthy or [(ip, port) for ip, port, _, _ in states]

    def take_elb(self, caller, op, token):
        """Draws an ELB call from the account's buckets and records it (with whether it was throttled)."""
        ok = self.buckets.take(caller, op)
        with self.lock:
            self.elb_calls.append((time.monotonic(), caller, op, token, not ok))
        return ok

    def count(self, caller, service, op, token=None):
        with self.lock:
            self.calls.append((time.monotonic(), caller, service, op))
            if token:
                self.calls_by_token[token] = self.calls_by_token.get(token, 0) + 1
                self.ops_by_token.setdefault(token, []).append(f"{service} {op}")


def fresh_health():
    """A target just registered (or attached again): `initial` until its checks have passed long enough."""
    return {"state": "initial", "ok_since": None, "fail_since": None, "reason": "Elb.RegistrationInProgress"}


def _caller(headers):
    auth = headers.get("Authorization") or ""
    marker = "Credential="
    if marker in auth:
        return auth.split(marker, 1)[1].split("/", 1)[0]
    return "anonymous"


def _targets_from_form(form):
    out, i = [], 1
    while f"Targets.member.{i}.Id" in form:
        port = form.get(f"Targets.member.{i}.Port", ["0"])[0]
        out.append((form[f"Targets.member.{i}.Id"][0], int(port)))
        i += 1
    return out


def _registered(xml):
    """The targets of a DescribeTargetHealth answer, as (id, port)."""
    out = []
    for member in ET.fromstring(xml).iter():
        if member.tag.rsplit("}", 1)[-1] != "Target":
            continue
        fields = {c.tag.rsplit("}", 1)[-1]: (c.text or "") for c in member}
        if "Id" in fields:
            out.append((fields["Id"], int(fields.get("Port") or 0)))
    return out


def _xml_text(s):
    return (str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def make_handler(world: World):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body in one segment, sent at once: otherwise a keep-alive client's delayed ACK stalls every
        # response by ~40 ms, which would be the emulator's latency, not the function's.
        wbufsize = -1
        disable_nagle_algorithm = True

        crash = None  # set per request by World.on_call
        token = None  # the caller's session token (one per Lambda attempt), set per request
        arrived = None  # when the request being answered arrived (monotonic)
        answered = 0  # requests answered on this connection (one handler per connection)

        def log_message(self, *_args):
            pass

        def _send(self, status, body, content_type, extra=None):
            if self.crash is not None:
                # The call took effect; the caller dies before it reads the answer.
                crash, self.crash = self.crash, None
                crash()
                self.close_connection = True
                return
            if world.rtt_s and self.arrived is not None:
                trips = 1 if self.answered else 3
                wait = self.arrived + trips * world.rtt_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            self.answered += 1
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _forward(self, body):
            req = urllib.request.Request(world.moto_url + self.path, data=body, method=self.command)
            for k, v in self.headers.items():
                if k.lower() not in ("host", "content-length", "connection", "accept-encoding"):
                    req.add_header(k, v)
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, r.read(), r.headers.get("Content-Type", "text/xml")
            except urllib.error.HTTPError as e:
                return e.code, e.read(), e.headers.get("Content-Type", "text/xml")

        def do_GET(self):  # noqa: N802
            self.arrived = time.monotonic()
            status, data, ctype = self._forward(None)
            self._send(status, data, ctype)

        def do_POST(self):  # noqa: N802
            self.arrived = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            caller = _caller(self.headers)
            token = self.token = self.headers.get("X-Amz-Security-Token")
            target = self.headers.get("X-Amz-Target") or ""
            form = raw_form = {}
            raw_body = body
            if self.path.startswith("/2015-03-31/functions/") and self.path.endswith("/invocations"):
                service, op = "lambda", "Invoke"
            elif target.startswith("CodeDeploy_"):
                service, op = "codedeploy", target.split(".", 1)[1]
            elif target.startswith("DynamoDB_"):
                service, op = "dynamodb", target.split(".", 1)[1]
            else:
                pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
                raw_form = {}
                for k, v in pairs:
                    raw_form.setdefault(k, []).append(v)
                op = dict(pairs).get("Action", "")
                service = "elbv2" if dict(pairs).get("Version") == "2015-12-01" else "ec2"
                if service == "elbv2" and world.nlb.ids:
                    pairs = [(k, world.nlb.moto(v)) for k, v in pairs]
                    body = urllib.parse.urlencode(pairs).encode()
                form = {}
                for k, v in pairs:
                    form.setdefault(k, []).append(v)
            world.count(caller, service, op, token)
            # Authorised as the caller spelled it (an NLB's ARNs as ELB spells them), before anything else: a denied
            # call costs no token and takes no effect.
            refusal = world.iam.refuse(caller, service, op, raw_form, raw_body, self.path) if world.iam else None
            if refusal:
                status, data, ctype, extra = fault_response(service, "denied", op, refusal)
                return self._send(status, data, ctype, extra)
            if service == "elbv2" and not world.take_elb(caller, op, token):
                # Refused before it takes effect: a throttled call changes nothing, so no crash point either.
                status, data, ctype, extra = fault_response("elbv2", "throttle", op)
                return self._send(status, data, ctype, extra)
            self.crash = world.on_call(caller, token, service, op) if world.on_call else None
            for kind, value in world.faults.pick(caller, service, op):
                if kind == "latency":
                    time.sleep(value / 1000)
                    continue
                if kind == "timeout":
                    # Hold the request unanswered until the caller gives up (its socket closes) or long past any
                    # sane client timeout.
                    self.connection.settimeout(TIMEOUT_FAULT_HOLD_S)
                    try:
                        self.connection.recv(1)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                if kind == "reset":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(__import__("socket").SHUT_RDWR)
                    except OSError:
                        pass
                    return
                status, data, ctype, extra = fault_response(service, kind, op)
                return self._send(status, data, ctype, extra)
            if service == "lambda":
                return self._invoke(body)
            if service == "codedeploy":
                return self._codedeploy(op, json.loads(body or b"{}"))
            if service == "dynamodb":
                status, data, ctype = self._forward(body)
                return self._send(status, data, ctype)
            action = op
            if service == "elbv2" and action == "DescribeTargetHealth":
                return self._describe_target_health(body, form)
            refusal = world.nlb.refusal(action, form) if service == "elbv2" else None
            if refusal:
                body = (f'<ErrorResponse xmlns="{ELB_NS}"><Error><Type>Sender</Type><Code>ValidationError</Code>'
                        f"<Message>{refusal}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")
                return self._send(400, body.encode(), "text/xml")
            status, data, ctype = self._forward(body)
            if service == "elbv2" and world.nlb.ids:
                data = world.nlb.real(data.decode()).encode()
            if service == "elbv2" and status == 200:
                self._observe(action, form)
            self._send(status, data, ctype)

        def _observe(self, action, form):
            if action in ("ModifyListener", "ModifyRule"):
                arn = form.get("ListenerArn", form.get("RuleArn", [""]))[0]
                world.refresh_route(arn)
            elif action in ("ModifyTargetGroup", "ModifyTargetGroupAttributes"):
                with world.lock:
                    world.timings.pop(form.get("TargetGroupArn", [""])[0], None)
            elif action in ("RegisterTargets", "DeregisterTargets"):
                tg = form.get("TargetGroupArn", [""])[0]
                targets = _targets_from_form(form)
                if action == "RegisterTargets":
                    world.on_register(tg, targets)
                else:
                    world.on_deregister(tg, targets)
                try:
                    world.refresh_members([tg])
                except Exception:
                    pass

        def _describe_target_health(self, body, form):
            # moto answers whether the group exists (and its error shape when it does not); the states are ours.
            status, data, ctype = self._forward(body)
            if status != 200:
                return self._send(status, data, ctype)
            # moto's answer lists the registered targets: the members are taken from it rather than asked for again,
            # so that the emulated call costs one round trip to moto, as the calls it passes through do.
            tg = form.get("TargetGroupArn", [""])[0]
            world.set_members(tg, _registered(data))
            members = []
            for ip, port, state, reason in world.target_states(tg):
                th = f"<State>{state}</State>"
                if reason:
                    th += (f"<Reason>{_xml_text(reason)}</Reason>"
                           f"<Description>{_xml_text(DESCRIPTIONS.get(reason, reason))}</Description>")
                members.append(
                    f"<member><Target><Id>{ip}</Id><Port>{port}</Port></Target>"
                    f"<HealthCheckPort>{port}</HealthCheckPort><TargetHealth>{th}</TargetHealth></member>"
                )
            xml = (
                f'<DescribeTargetHealthResponse xmlns="{ELB_NS}"><DescribeTargetHealthResult>'
                f"<TargetHealthDescriptions>{''.join(members)}</TargetHealthDescriptions>"
                f"</DescribeTargetHealthResult><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId>"
                f"</ResponseMetadata></DescribeTargetHealthResponse>"
            )
            self._send(200, xml.encode(), "text/xml")

        def _invoke(self, body):
            name = urllib.parse.unquote(self.path.split("/")[3]).rsplit(":", 1)[-1]
            if self.headers.get("X-Amz-Invocation-Type") != "Event" or world.invoke is None:
                return self._json(400, {"message": "the rehearsal's Lambda takes asynchronous invocations only"},
                                  "InvalidParameterValueException")
            try:
                world.invoke(name, json.loads(body or b"{}"))
            except KeyError:
                return self._json(404, {"message": f"Function not found: {name}"}, "ResourceNotFoundException")
            self._send(202, b"", "application/json")

        # --- CodeDeploy ---------------------------------------------------------------------------------------
        def _json(self, status, obj, error_type=None):
            extra = {"x-amzn-RequestId": str(uuid.uuid4())}
            if error_type:
                extra["X-Amzn-ErrorType"] = error_type
            self._send(status, world.nlb.real(json.dumps(obj)).encode(), "application/x-amz-json-1.1", extra)

        def _error(self, error_type, message):
            self._json(400, {"__type": error_type, "message": message}, error_type)

        def _codedeploy(self, op, req):
            status, obj, error_type = codedeploy_answer(world, op, req, self.token)
            self._json(status, obj, error_type)

    return Handler


def serve(world: World, health=True) -> ThreadingHTTPServer:
    """An endpoint of the emulated account; `health=False` for a further one (a service's own address) over the
    same world, whose health checks the first one already runs."""
    server = QuietServer(("127.0.0.1", 0), make_handler(world))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if health:
        threading.Thread(target=world.health_loop, daemon=True).start()
    return server
