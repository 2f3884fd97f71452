"""The rehearsal: a whole CodeDeploy ECS blue/green deployment on loopback, played against moto with the hooks'
real release binaries, and a report, with evidence, of whether the private side stayed in lockstep.

    python rehearse.py [--scenario NAME] [--tasks N] [--config AllAtOnce|Canary10Percent|Linear10Percent] [--json]

Minutes of the deployment configs are played as seconds. Exit status 0 only when the outcome is the expected one
and every invariant held."""

import argparse
import json
import os
import random
import sys
import threading
import time
import urllib.request

import boto3
from botocore.config import Config as BotoConfig

import codedeploy
import iam
import procs
import sides
import standin
from budget import elb_report
from lambda_host import AWS_RETRY_DELAYS_S, LambdaHost
from player import Player
from shadow import Shadow
from probe import Probe

# The scenarios and shared helpers (the fleet, the bench and the checks read REGION, ROOT and TASK_PORT from here).
from scenarios import (
    CONFIGS, FLEET_ABOUT, HOOK_LATENCY_S, HOOK_TIMEOUT_S, HOOKS, TERMINATION_WAIT_S, MINUTE_S, RECONCILER_KEY, RECONCILER_TIMEOUT_S, REGION, ROOT,
    SCENARIOS, SCHEDULE_EVERY_S, TASK_PORT, Timeline, access_key, fmt_route, is_follow, parse_crash, same_traffic,
    shares, short,
)

# The installation's templates: the emulated IAM gives each function the role its template gives it (template.yaml
# for bindings in the environment, fleet.yaml for stored ones) and the operator CLI operator.yaml's policies.
TEMPLATE = os.path.join(ROOT, "infra", "template.yaml")
FLEET_TEMPLATE = os.path.join(ROOT, "infra", "fleet.yaml")
OPERATOR_TEMPLATE = os.path.join(ROOT, "infra", "operator.yaml")
# The templates' FunctionNamePrefix default: the follower is invoked by the name the template gives it.
FUNCTION_PREFIX = "bluegreen-mirror"
# EventBridge delivers at least once and in no promised order: each delivery comes up to this much late (so events
# sent together may arrive swapped), and this share of events is delivered a second time, later still.
EVENT_JITTER_S = 0.1
DUPLICATE_EVENT_RATE = 0.1


class Rehearsal(Player, Shadow):
    def __init__(self, scenario, tasks, config, out, faults="", crash=None, lane=0):
        self.name = scenario
        self.lane = lane
        self.faults = ",".join(filter(None, (SCENARIOS[scenario].get("faults"), faults)))
        self.crash = None
        if crash:
            function, n = parse_crash(crash)
            self.crash = {"function": function, "after_call": n, "fired": False, "call": None, "token": None,
                          "seen": 0}
        self.spec = dict(SCENARIOS[scenario])
        self.config = config or self.spec.get("config", "AllAtOnce")
        self.tasks = tasks
        self.log = Timeline(out)
        self.run_dir = os.path.join(ROOT, "target", "rehearsal", f"{scenario}-{int(time.time())}-{os.getpid()}")
        os.makedirs(self.run_dir, exist_ok=True)
        self.task_procs = {"blue": [], "green": []}
        self.hook_reports = {}
        self.outcome = None
        self.messages = []
        self.minute_s = MINUTE_S
        self.schedule_s = SCHEDULE_EVERY_S
        self.poll_ms = 200
        self.neighbour = None
        self.neighbour_per_s = 0.0
        self.deployment_id = "d-REHEARSAL1"
        self.reconciler_timeout_s = RECONCILER_TIMEOUT_S
        self.hook_timeout_s = HOOK_TIMEOUT_S
        self.hook_latency_s = self.spec.get("hook_latency_s", HOOK_LATENCY_S)
        # CodeDeploy's wait after rerouting before it terminates the original tasks (rehearsal seconds).
        self.termination_wait_s = self.spec.get("termination_wait_s", TERMINATION_WAIT_S)
        # The installation's ELB read budget the functions are told (None: their default, 2 a second).
        self.elb_reads_per_s = None
        # The bindings in the state table (`bluegreen-mirror bindings apply`) rather than the environment.
        self.stored_bindings = False
        # ELB's buckets for the account: the documented ones, or `tight` (the figures before March 2026).
        self.elb_buckets = "current"
        # How ELB spells the NLBs this scenario creates (moto spells them as ALBs).
        self.nlb = standin.NlbSpelling()
        # The template whose roles and concurrency the functions get (None: template.yaml, or fleet.yaml for
        # stored bindings), and the deployments at once it is sized for (fleet.yaml's ConcurrentDeployments).
        self.template = None
        self.concurrent_deployments = 1
        # The functions' timeouts as the template sets them (AfterAllowTraffic 300 s, the others 900 s) instead of
        # the rehearsal's shorter ones: for outages that a function may wait out as it would on AWS.
        self.template_timeouts = False
        # EventBridge's order and duplicates, drawn from a generator of the run's own.
        self.events_rng = random.Random(13)
        self.events_duplicated = 0

    # --- the emulated account --------------------------------------------------------------------------------
    def start_account(self, health_checks=True):
        """moto, the scenario's resources, and the emulated endpoint in front (its health checks real, or every
        registered target passing when `health_checks` is off: a test with no task processes)."""
        self.start_moto()
        self.provision()
        self.start_standin()
        self.world.active_checks = health_checks

    def start_moto(self):
        port = procs.free_port()
        moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
        log = open(os.path.join(self.run_dir, "moto.log"), "wb")
        self.moto = procs.spawn([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
        self.moto_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.moto_url + "/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.moto.poll() is not None:
                    raise RuntimeError(f"moto_server did not start (see {self.run_dir}/moto.log)")
                time.sleep(0.1)
        self.log("setup", f"moto_server on 127.0.0.1:{port}")

    def client(self, service, endpoint, key):
        return boto3.client(service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id=key,
                            aws_secret_access_key="rehearsal",
                            config=BotoConfig(retries={"max_attempts": 2, "mode": "standard"}))

    def account(self):
        """The account every scenario starts from: a VPC with two subnets and the state table (with TTL). Returns
        the ELB client, the VPC and the subnets."""
        ec2 = self.client("ec2", self.moto_url, "PROVISION")
        self.ddb = self.client("dynamodb", self.moto_url, "PROVISION")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{az}")
                   ["Subnet"]["SubnetId"] for i, az in ((1, "a"), (2, "b"))]
        self.table = "bluegreen-mirror"
        self.ddb.create_table(TableName=self.table, BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
        self.ddb.update_time_to_live(TableName=self.table,
                                     TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"})
        return self.client("elbv2", self.moto_url, "PROVISION"), vpc, subnets

    def provision(self):
        elb, vpc, subnets = self.account()
        nlb = self.spec.get("private") == "nlb"
        lbs = {}
        for side, scheme in (("public", "internet-facing"), ("private", "internal")):
            kind = "network" if nlb and side == "private" else "application"
            lbs[side] = elb.create_load_balancer(Name=side, Subnets=subnets, Scheme=scheme,
                                                 Type=kind)["LoadBalancers"][0]["LoadBalancerArn"]
        if nlb:
            self.nlb.add(lbs["private"])
        tgs = {}
        for side in ("pub", "prv"):
            for color in ("blue", "green"):
                # An NLB group speaks TCP to the task; it health-checks HTTP on the same path, as strong a gate as
                # the ALB's (`check` warns when it is weaker).
                protocol = "TCP" if nlb and side == "prv" else "HTTP"
                tgs[f"{side}-{color}"] = elb.create_target_group(
                    Name=f"{side}-{color}", Protocol=protocol, Port=TASK_PORT, VpcId=vpc, TargetType="ip",
                    HealthCheckProtocol="HTTP", HealthCheckPath="/health", HealthCheckIntervalSeconds=30,
                    HealthCheckTimeoutSeconds=2,
                    HealthyThresholdCount=5,
                )["TargetGroups"][0]["TargetGroupArn"]

        def forward(live, idle, single):
            if single:
                return [{"Type": "forward", "TargetGroupArn": live}]
            return [{"Type": "forward", "ForwardConfig": {"TargetGroups": [
                {"TargetGroupArn": live, "Weight": 100}, {"TargetGroupArn": idle, "Weight": 0}]}}]

        listeners = {}
        for side, p in (("public", "pub"), ("private", "prv")):
            single = nlb and side == "private"
            for name, port in (("prod", 80), ("test", 8080)):
                # An NLB listener forwards to one group: blue on production, the idle green on test.
                live, idle = (f"{p}-green", f"{p}-blue") if single and name == "test" else (f"{p}-blue", f"{p}-green")
                listeners[f"{side}-{name}"] = elb.create_listener(
                    LoadBalancerArn=lbs[side], Protocol="TCP" if single else "HTTP", Port=port,
                    DefaultActions=forward(tgs[live], tgs[idle], single),
                )["Listeners"][0]["ListenerArn"]
        self.lbs, self.tgs, self.listeners = lbs, tgs, listeners
        # The bindings name the private side as ELB spells it (an NLB's ARNs are `net/`).
        self.bindings = {"bindings": [{
            "application": "web", "deployment_group": "web-bg",
            "pairs": [{"public_target_group": tgs["pub-blue"], "private_target_group": tgs["prv-blue"]},
                      {"public_target_group": tgs["pub-green"], "private_target_group": tgs["prv-green"]}],
            "private_production_route": {"listener": self.nlb.real(listeners["private-prod"])},
            "private_test_route": {"listener": self.nlb.real(listeners["private-test"])},
            "health_timeout_seconds": 8,
        }]}
        private = "an internal NLB with TCP groups" if nlb else "a private ALB"
        self.log("setup", f"provisioned VPC, public ALB and {private}, 4 ip target groups, listeners :80 and "
                          ":8080 on each, DynamoDB table")
        if self.spec.get("link"):
            sides.provision(self, elb, subnets, vpc, TASK_PORT)

    def start_standin(self):
        self.world = standin.World(self.moto_url, self.client("elbv2", self.moto_url, "STANDIN"))
        self.world.nlb = self.nlb
        for tg in self.tgs.values():
            self.world.tg_lb[tg] = sides.load_balancer_of(self, tg)
        for key, arn in self.listeners.items():
            self.world.track_route(arn, self.lbs[key.split("-")[0]])
        for group, service in (("web-bg", "web"), ("web-bg-unbound", "web-unbound")):
            self.world.groups[("web", group)] = codedeploy.DeploymentGroup(
                "web", group, ["pub-blue", "pub-green"],
                (self.listeners["public-prod"], self.listeners["public-test"]), ("rehearsal", service),
                self.termination_wait_s)
        self.service = "web"
        self.world.faults = standin.Faults(self.faults)
        self.log.on_phase = self.world.faults.phase_started
        self.world.buckets = standin.ElbBuckets(standin.BUCKET_SETTINGS[self.elb_buckets])
        self.world.on_call = self.on_call
        self.server = standin.serve(self.world)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        # The rehearsal's own ECS and CodeDeploy act through the stand-in, so their changes are seen and timed.
        self.elb = self.client("elbv2", self.endpoint, "CODEDEPLOY")
        self.log("setup", f"emulated AWS endpoint {self.endpoint} (health checks, CodeDeploy, moto behind)")

    def on_call(self, caller, token, service, op):
        """Crash injection: the n-th AWS call of the chosen function's first attempt takes effect, then the process
        is SIGKILLed before it reads the answer. Lambda's retry (lambda_host) and the idempotent functions must
        then bring everything where it would have been."""
        c = self.crash
        function = "reconciler" if c and c["function"] == "follower" else (c or {}).get("function")
        if c is None or c["fired"] or caller != access_key(function) or not token:
            return None
        if c["token"] is None:
            if c["function"] == "follower" and not is_follow(self.host.attempt(token)):
                return None
            c["token"] = token
        if token != c["token"]:
            return None
        c["seen"] += 1
        if c["seen"] < c["after_call"]:
            return None
        c["fired"], c["call"] = True, f"{service} {op}"

        def crash():
            self.host.kill(token)
            self.log("Crash", f"{c['function']} SIGKILLed right after its AWS call #{c['after_call']} ({service} {op} "
                              f"took effect, its answer never read); Lambda retries the invocation")
        return crash

    def name_of(self, caller, token):
        """The function behind an ELB call (`follower` for the reconciler in follow mode), `neighbour`, or None for
        the calls the rehearsal's ECS and CodeDeploy make on the customer's behalf."""
        if caller == standin.Neighbour.KEY:
            return "neighbour"
        if not caller.startswith("AKID"):
            return None
        if caller == RECONCILER_KEY:
            return "follower" if is_follow(self.host.attempt(token)) else "reconciler"
        return next((f for _, f in HOOKS if access_key(f) == caller), caller)

    def start_neighbour(self, per_s, target_groups):
        if per_s > 0:
            self.neighbour = standin.Neighbour(self.endpoint, REGION, target_groups, per_s).start()
            self.log("setup", f"a neighbour in the account reads ELB {per_s:g} times a second")

    def budget_report(self, t0):
        r = elb_report(self.world, t0, time.monotonic(), self.name_of)
        if self.neighbour:
            r["neighbour"] = {"per_s": self.neighbour.per_s, "calls": self.neighbour.calls,
                              "throttles": self.neighbour.throttles, "errors": self.neighbour.errors}
        return r

    # --- EventBridge, played ---------------------------------------------------------------------------------
    def emit(self, source, detail_type, detail, delay_s=0.0, note=""):
        event = {"version": "0", "id": str(random.getrandbits(64)), "detail-type": detail_type, "source": source,
                 "account": "123456789012", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "region": REGION, "resources": [], "detail": detail}

        def fire(again=False):
            if self.stopping.is_set():
                return
            self.log("EventBridge", f"{detail_type} {note}-> reconciler" + (" (delivered again)" if again else ""))
            self.host.invoke_async("reconciler", event, RECONCILER_KEY)

        self.host.later(delay_s + self.events_rng.uniform(0, EVENT_JITTER_S), fire)
        if self.events_rng.random() < DUPLICATE_EVENT_RATE:
            self.events_duplicated += 1
            self.host.later(delay_s + self.events_rng.uniform(0, 4 * EVENT_JITTER_S), lambda: fire(True))

    def deployment_event(self, state, delay_s=0.0):
        d = self.deployment
        self.emit("aws.codedeploy", "CodeDeploy Deployment State-change Notification",
                  {"region": REGION, "deploymentId": d.id, "instanceGroupId": "ig-1", "deploymentGroup": d.group,
                   "application": d.application, "state": state}, delay_s, f"({state}) ")

    def task_event(self, ip, desired, delay_s):
        self.emit("aws.ecs", "ECS Task State Change",
                  {"clusterArn": f"arn:aws:ecs:{REGION}:123456789012:cluster/rehearsal",
                   "group": f"service:{self.service}",
                   "lastStatus": "RUNNING", "desiredStatus": desired,
                   "attachments": [{"type": "eni", "details": [{"name": "privateIPv4Address", "value": ip}]}]},
                  delay_s, f"({ip} {desired}) ")

    def schedule(self):
        while not self.stopping.wait(self.schedule_s):
            self.emit("aws.events", "Scheduled Event", {}, 0.0)

    def convergence_bound_s(self):
        """How long the reconciler invocations the run's events started may take to end, counted from the end of
        the run's last move: an event's delivery, a cold start and a reconcile (5 s), plus what this run's faults
        cost a correct product. Throttling: ELB reads paused after throttles (1, 2, 4 s) and the SDK's retries
        (10 s more); 5xx and resets: the SDK's retries (5 s); a crash: Lambda's retries of the crashed attempt, each
        of which may run to the reconciler's timeout."""
        bound = 5.0
        if "throttle" in self.faults:
            bound += 10.0
        elif self.faults:
            bound += 5.0
        # An outage: the product may wait it out, so its length counts too.
        bound += sum(span[1] for *_, span in self.world.faults.rules if span)
        if self.crash:
            bound += sum(self.host.retry_delays_s) + len(self.host.retry_delays_s) * self.reconciler_timeout_s
        return bound

    def settle(self):
        """Waits, within `convergence_bound_s`, for every event sent so far to be delivered and every reconciler
        invocation it started to end (the schedule's sweeps and the followers, which are not started by events, go
        on). Returns the invocations still running at the bound: the product was late."""
        bound = self.convergence_bound_s()
        t = time.monotonic()
        busy = self.host.settle(bound, ignore=lambda inv: is_follow(inv) or (
            isinstance(inv.event, dict) and inv.event.get("source") == "aws.events"))
        self.log("end", f"every event handled {time.monotonic() - t:.1f} s after the last move (bound {bound:g} s)"
                 if not busy else f"{len(busy)} invocation(s) still running {bound:g} s after the last move")
        return busy

    def rollback_write_after_calls(self):
        """How many AWS calls the first reconciler attempt woken by a FAILURE or STOP made before its first write
        of a private route (None: it wrote none, or there was no such event)."""
        for inv in self.host.invocations:
            state = ((inv.event or {}).get("detail") or {}).get("state") if isinstance(inv.event, dict) else None
            if inv.function == "reconciler" and inv.attempt == 1 and state in ("FAILURE", "STOP"):
                ops = self.world.ops_by_token.get(inv.token, [])
                return next((i for i, op in enumerate(ops) if op in ("elbv2 ModifyListener", "elbv2 ModifyRule")),
                            None)
        return None

    # --- evidence ------------------------------------------------------------------------------------------
    def members(self, tg):
        return sorted(f"{ip}:{port}" for ip, port, st, _ in self.world.target_states(tg) if st != "draining")

    def evaluate(self):
        tg = self.tgs
        w = self.world
        pairs = [(tg["pub-blue"], tg["prv-blue"]), (tg["pub-green"], tg["prv-green"])]
        mirror = dict(pairs)

        def mirrored(route):
            return [(mirror.get(t, t), wt) for t, wt in route]

        private_prod = w.route(self.listeners["private-prod"])
        live = set(shares(private_prod))
        i1, stale = True, []
        for pub, prv in pairs:
            if prv in live:
                i1 &= self.members(pub) == self.members(prv)
            else:
                extra = sorted(set(self.members(prv)) - set(self.members(pub)))
                if extra:
                    stale.append(f"{short(prv)} (idle) still holds {len(extra)} targets its mirror no longer has")
        i2 = same_traffic(private_prod, mirrored(w.route(self.listeners["public-prod"])))
        private_test = w.route(self.listeners["private-test"])
        if self.spec.get("private") == "nlb":
            # An NLB's test listener holds the idle group, so that both stay attached and health-checked.
            i3 = [t for t, _ in private_test] == [prv for _, prv in pairs if prv not in live] and len(live) == 1
        else:
            i3 = same_traffic(private_test, mirrored(w.route(self.listeners["public-test"])))
        pub_stats = self.probe.stats("public", "private")
        prv_stats = self.probe.stats("private", "public")
        i4 = prv_stats["dark_while_other_side_served_ms"] == 0
        return {"I1_membership": i1, "I2_production_route": i2, "I3_test_route": i3, "I4_never_dark": i4}, \
            stale, pub_stats, prv_stats

    def flip_skew_ms(self):
        pub_green, prv_green = self.tgs["pub-green"], self.tgs["prv-green"]

        def first_full(arn, green):
            for t, a, route in self.world.route_events:
                if a == arn and t >= self.judged_from and shares(route).get(green) == 1.0:
                    return t
            return None

        p = first_full(self.listeners["public-prod"], pub_green)
        q = first_full(self.listeners["private-prod"], prv_green)
        return None if p is None or q is None else round((q - p) * 1000, 1)

    def lag_per_step_ms(self):
        """For each change of the public production route, how long until the private route mirrored it."""
        mirror = {self.tgs["pub-blue"]: self.tgs["prv-blue"], self.tgs["pub-green"]: self.tgs["prv-green"]}
        pub_arn, prv_arn = self.listeners["public-prod"], self.listeners["private-prod"]
        events = [(t, a, r) for t, a, r in self.world.route_events if a in (pub_arn, prv_arn)]
        private, out = None, []
        for i, (t, arn, route) in enumerate(events):
            if arn != pub_arn:
                private = route
                continue
            want = [(mirror.get(tg, tg), w) for tg, w in route]
            if private is not None and same_traffic(private, want):
                out.append(0.0)
                continue
            later = next((t2 for t2, a2, r2 in events[i + 1:] if a2 == prv_arn and same_traffic(r2, want)), None)
            out.append(None if later is None else round((later - t) * 1000, 1))
        return out

    def count_in_logs(self, prefix, needle):
        n = 0
        for name in os.listdir(self.run_dir):
            if name.startswith(prefix):
                with open(os.path.join(self.run_dir, name), errors="replace") as f:
                    n += f.read().count(needle)
        return n

    def max_weight_lag_ms(self):
        """The longest time the private production route's shares differed from the mirror of the public one."""
        mirror = {self.tgs["pub-blue"]: self.tgs["prv-blue"], self.tgs["pub-green"]: self.tgs["prv-green"]}
        pub_arn, prv_arn = self.listeners["public-prod"], self.listeners["private-prod"]
        public = private = None
        since, worst = None, 0.0
        for t, arn, route in self.world.route_events:
            if arn == pub_arn:
                public = [(mirror.get(tg, tg), w) for tg, w in route]
            elif arn == prv_arn:
                private = route
            else:
                continue
            if public is None or private is None:
                continue
            if not same_traffic(public, private):
                since = since if since is not None else t
            elif since is not None:
                worst, since = max(worst, t - max(since, self.judged_from)), None
        if since is not None:
            worst = max(worst, time.monotonic() - max(since, self.judged_from))
        return round(worst * 1000, 1)

    def private_writes(self):
        """ELB writes made by the hooks (the reconciler is counted apart)."""
        ops = ("RegisterTargets", "DeregisterTargets", "ModifyListener", "ModifyRule")
        return sum(1 for _, who, _, op in self.world.calls
                   if who.startswith("AKID") and who != RECONCILER_KEY and op in ops)

    def tag_managed(self, arns):
        """Tags private resources bluegreen-mirror:managed=true, as the fleet installation's roles require."""
        elb = self.client("elbv2", self.moto_url, "PROVISION")
        for arn in arns:
            elb.add_tags(ResourceArns=[arn], Tags=[{"Key": "bluegreen-mirror:managed", "Value": "true"}])

    # --- IAM ---------------------------------------------------------------------------------------------------
    def account_iam(self):
        """The account's IAM on the emulated endpoint, created on first use."""
        if self.world.iam is None:
            world = self.world

            def tags_of(arn):
                try:
                    found = world.elb.describe_tags(ResourceArns=[world.nlb.moto(arn)])["TagDescriptions"]
                except Exception:  # noqa: BLE001 - a resource that does not exist has no tags
                    return {}
                return {t["Key"]: t["Value"] for t in (found[0].get("Tags", []) if found else [])}

            def group_of(deployment_id):
                d = world.deployments.get(deployment_id)
                return (d.application, d.group) if d else None
            world.iam = iam.Account(REGION, tags_of, group_of)
        return self.world.iam

    def install_template(self):
        """Each function gets the role and the reserved concurrency the installation's template gives it, for this
        scenario's resources (the fleet's template sized for its deployments at once)."""
        table = self.spec.get("table", self.table)
        resources = {"StateTable": table, "StateTable.Arn": f"arn:aws:dynamodb:{REGION}:{iam.ACCOUNT_ID}:table/{table}"}
        if self.stored_bindings:
            path = self.template or FLEET_TEMPLATE
            sizes = [int(v) for v in iam.load_template(path)["Parameters"]["ConcurrentDeployments"]["AllowedValues"]]
            params = {"CodeDeployApplications": "web",
                      "EcsClusterArns": f"arn:aws:ecs:{REGION}:{iam.ACCOUNT_ID}:cluster/rehearsal",
                      "ConcurrentDeployments": str(min((n for n in sizes if n >= self.concurrent_deployments),
                                                       default=max(sizes)))}
        else:
            path = self.template or TEMPLATE
            params = iam.single_binding_params(self.bindings["bindings"][0], "rehearsal")
        template = iam.Template(path, params, REGION, resources)
        for logical, binary in iam.functions_built().items():
            self.account_iam().grant(access_key(binary), binary, template.function_policies(logical))
            self.host.concurrency[binary] = template.function_concurrency(logical)
            if self.template_timeouts:
                self.host.timeouts[binary] = template.function_timeout(logical)
        if self.template_timeouts:
            # Real time throughout: Lambda retries a failed attempt after its real 1 and 2 minutes, and CodeDeploy
            # waits for a hook as long as the longest of them may run.
            self.host.retry_delays_s = AWS_RETRY_DELAYS_S
            self.hook_timeout_s = max(t for f, t in self.host.timeouts.items() if f != "reconciler")
            self.reconciler_timeout_s = self.host.timeouts["reconciler"]

    def grant_operator(self, key, change=True, table=None):
        """The operator CLI's policies from operator.yaml: the read policy, with the change policy when `change`."""
        template = iam.Template(OPERATOR_TEMPLATE, {"StateTableName": table or self.table}, REGION)
        policy = template.managed_policy("OperatorReadPolicy")
        if change:
            policy = policy + template.managed_policy("OperatorChangePolicy")
        self.account_iam().grant(key, "operator", policy)

    def apply_bindings(self):
        """Stores the bindings as an operator would: `bluegreen-mirror bindings apply`, which checks each one
        against the account first. Its ELB reads are paced (6 a second here, set for the run) so that applying a
        fleet's bindings does not drain the account's bucket."""
        bin_dir = os.environ.get("BLUEGREEN_MIRROR_BIN_DIR", os.path.join(ROOT, "target", "release"))
        self.grant_operator("AKIDOPERATOR")
        path = os.path.join(self.run_dir, "bindings.json")
        with open(path, "w") as f:
            json.dump(self.bindings, f, indent=2)
        env = {"PATH": os.environ.get("PATH", ""), "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "AKIDOPERATOR",
               "AWS_SECRET_ACCESS_KEY": "operator", "AWS_ENDPOINT_URL": self.endpoint,
               "AWS_EC2_METADATA_DISABLED": "true", "BLUEGREEN_MIRROR_TABLE": self.table,
               "BLUEGREEN_MIRROR_ELB_READS_PER_S": "6", "USER": "rehearsal"}
        p = procs.subprocess.run([os.path.join(bin_dir, "bluegreen-mirror"), "bindings", "apply", path, "--json"],
                                 env=env, capture_output=True, timeout=600)
        try:
            out = json.loads(p.stdout)
        except ValueError:
            out = {}
        if p.returncode != 0 or not out.get("ok"):
            raise RuntimeError(f"bluegreen-mirror bindings apply failed ({p.returncode}): "
                               f"{p.stdout.decode()[-2000:]} {p.stderr.decode()[-2000:]}")
        self.stored_bindings = True
        self.log("operator", f"bluegreen-mirror bindings apply: {out.get('written')} bindings checked and stored "
                             f"in {self.table}")

    def start_host(self):
        """The functions behind the local Lambda Runtime API, configured as the SAM template configures them."""
        bin_dir = os.environ.get("BLUEGREEN_MIRROR_BIN_DIR", os.path.join(ROOT, "target", "release"))
        functions = {f: os.path.join(bin_dir, f) for _, f in HOOKS}
        functions["reconciler"] = os.path.join(bin_dir, "reconciler")
        for f, path in functions.items():
            if not os.access(path, os.X_OK):
                raise RuntimeError(f"{path} is missing: build the hooks with cargo build --release")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, "AWS_SECRET_ACCESS_KEY": "rehearsal",
            "AWS_ENDPOINT_URL": self.endpoint, "AWS_EC2_METADATA_DISABLED": "true",
            "BLUEGREEN_MIRROR_TABLE": self.spec.get("table", self.table),
            "BLUEGREEN_MIRROR_POLL_MS": str(self.poll_ms), "AWS_LAMBDA_LOG_LEVEL": "info", "AWS_LAMBDA_LOG_FORMAT": "JSON",
            "BLUEGREEN_MIRROR_MINUTE_MS": str(round(self.minute_s * 1000)),
            "BLUEGREEN_MIRROR_SCHEDULE_S": str(round(self.schedule_s)),
            "BLUEGREEN_MIRROR_FOLLOWER": f"{FUNCTION_PREFIX}-reconciler",
        }
        if self.elb_reads_per_s is not None:
            env["BLUEGREEN_MIRROR_ELB_READS_PER_S"] = f"{self.elb_reads_per_s:g}"
        if not self.stored_bindings:
            env["BLUEGREEN_MIRROR_BINDINGS"] = self.spec.get("bindings_env") or json.dumps(self.bindings)
        timeouts = {f: self.hook_timeout_s for f in functions}
        timeouts["reconciler"] = self.reconciler_timeout_s
        self.host = LambdaHost(functions, env, self.run_dir, timeouts)
        # Lambda's Invoke names the reconciler as the template does; the host knows the function by its binary.
        self.world.invoke = lambda name, payload: self.host.invoke_async(
            name.removeprefix(f"{FUNCTION_PREFIX}-"), payload, RECONCILER_KEY)
        self.install_template()
        self.stopping = threading.Event()

    def run(self):
        self.log("setup", f"scenario {self.name}: {self.spec['about']}")
        self.start_account()
        self.start_host()

        blue_ips = self.start_tasks("blue")
        blues = [tg for key, tg in self.tgs.items() if key.endswith("-blue")]
        for tg in blues:
            self.register(tg, blue_ips, events=False)
        if not all(self.wait_healthy(tg, blue_ips) for tg in blues):
            raise RuntimeError("blue tasks did not become healthy")
        self.log("setup", f"{len(blue_ips)} blue tasks serving on both load balancers")

        self.probe = Probe(self.world, {
            "public": (self.listeners["public-prod"], self.lbs["public"]),
            "private": (self.listeners["private-prod"], self.lbs["private"]),
            **({"link": (self.listeners["link-prod"], self.lbs["link"])} if "link" in self.lbs else {}),
        })
        self.probe.start()
        self.start_neighbour(self.neighbour_per_s, list(self.tgs.values()))
        time.sleep(0.5)
        budget_t0 = time.monotonic()
        writes_before = self.private_writes()
        threading.Thread(target=self.schedule, daemon=True).start()
        late = []
        try:
            (self.play_between if self.spec.get("between") else self.play_observed if self.spec.get("observe")
             else self.play)()
            late = self.settle()
            if self.spec.get("between"):
                self.judge_between()
        except Exception as e:
            self.outcome = "failed"
            self.messages.append(f"the rehearsal itself failed: {e!r}")
        # The probe samples the state the events left.
        time.sleep(0.5)
        self.stopping.set()
        self.probe.finish()
        if self.neighbour:
            self.neighbour.stop.set()
        elb = self.budget_report(budget_t0)
        self.world.stop.set()

        invariants, stale, pub, prv = self.evaluate()
        invariants.update(getattr(self, "shadow_checks", {}))
        link = None
        if "link" in self.lbs:
            more, link_stats, link_lag = sides.evaluate(self, shares, same_traffic)
            invariants.update(more)
            link = {"requests": link_stats["requests"], "failed_requests": link_stats["failed_requests"],
                    "served_by_version": link_stats["served_by_version"], "dark_ms": link_stats["dark_ms"],
                    "majority_lag_ms": link_lag, "flip_skew_ms": sides.flip_skew_ms(self)}
        for hook in self.hook_reports.values():
            if hook.get("message") and hook["verdict"] != "Succeeded":
                self.messages.append(f"{hook['function']}: {hook['message']}")
        expected = self.spec["expected"]
        # A scenario that shows a misconfiguration's cost names the invariants it must break; the others hold.
        broken = set(self.spec.get("expected_broken", ()))
        expected_inv = not broken
        held = all(v for k, v in invariants.items() if k not in broken) and not any(invariants.get(k) for k in broken)
        if self.spec.get("expected_log"):
            # What a hook must have logged (a warning that says what to fix).
            prefix, needle = self.spec["expected_log"]
            invariants["hook_logged_the_warning"] = self.count_in_logs(prefix, needle) > 0
            held = held and invariants["hook_logged_the_warning"]
        # DynamoDB agrees with ELB: the binding record names the private group that carries production traffic.
        item = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": "binding#web#web-bg"}}, ConsistentRead=True)
        if "Item" in item:
            live = [tg for tg, share in shares(self.world.route(self.listeners["private-prod"])).items() if share]
            recorded = json.loads(item["Item"]["doc"]["S"]).get("live_private_target_group")
            invariants["state_consistent_with_elb"] = len(live) != 1 or recorded == live[0]
            held = held and invariants["state_consistent_with_elb"]
        # The product converges within the bound the faults allow: a late reconcile is a failure, not a result.
        invariants["events_handled_within_bound"] = not late
        held = held and not late
        if late:
            self.messages.append(f"{len(late)} reconciler invocation(s) still running {self.convergence_bound_s():g} s "
                                 f"after the last move: " + ", ".join(os.path.basename(i.log_path or "?") for i in late))
        # IAM as the account enforces it: no call of the functions (or the operator CLI) was refused.
        refused = self.world.iam.denied() if self.world.iam else []
        invariants["every_call_allowed_by_iam"] = not refused
        held = held and not refused
        for who, action, resource in refused[:5]:
            self.messages.append(f"IAM refused {who} {action} on {resource}")
        # The harness's promise, seen from CodeDeploy: every invocation reported exactly once.
        invariants["every_invocation_reported_once"] = all(
            h["every_attempt_reported_once"] for h in self.hook_reports.values())
        held = held and invariants["every_invocation_reported_once"]
        if self.spec.get("untouched"):
            untouched = self.private_writes() == writes_before
            invariants["private_side_untouched"] = untouched
            held = held and untouched
        if self.spec.get("expected_message"):
            # Bad configuration must be reported with a message that says what to fix.
            named = any(self.spec["expected_message"] in (h.get("message") or "") for h in self.hook_reports.values())
            invariants["failure_message_names_the_fix"] = named
            held = held and named
        first_reconcile = next((i for i in self.host.invocations if i.function == "reconciler"), None)
        first_follower = next((i for i in self.host.invocations if is_follow(i)), None)
        crash = None
        if self.crash:
            crash = {k: self.crash[k] for k in ("function", "after_call", "fired", "call")}
        names = {arn: key for key, arn in self.listeners.items()}
        report = {
            "scenario": self.name,
            "config": self.config,
            "lane": self.lane,
            "faults": self.faults or None,
            "crash": crash,
            "faults_injected": self.world.faults.injected,
            "tasks": self.tasks,
            "outcome": self.outcome,
            "expected_outcome": expected,
            "invariants_held": held,
            "expected_invariants_held": expected_inv,
            "expected_broken": sorted(broken),
            "invariants": invariants,
            "notes": stale,
            "private_dark_ms": prv["dark_ms"],
            "public_dark_ms": pub["dark_ms"],
            "flip_skew_ms": self.flip_skew_ms(),
            "hook_latency_s": self.hook_latency_s,
            "requests": {"public": pub["requests"], "private": prv["requests"]},
            "failed_requests": {"public": pub["failed_requests"], "private": prv["failed_requests"]},
            "served_by_version": {"public": pub["served_by_version"], "private": prv["served_by_version"]},
            "max_weight_lag_ms": self.max_weight_lag_ms(),
            "rollback_write_after_calls": self.rollback_write_after_calls(),
            "side_2": link,
            "hooks": self.hook_reports,
            "reconciler": {
                "invocations": sum(1 for i in self.host.invocations if i.function == "reconciler"),
                "aws_calls": sum(1 for c in self.world.calls if c[1] == RECONCILER_KEY),
                "first_attempt_calls": self.world.calls_by_token.get(first_reconcile.token, 0)
                if first_reconcile else 0,
                "attempts_retried": sum(1 for i in self.host.invocations if i.function == "reconciler" and i.attempt > 1),
                "first_follower_attempt_calls": self.world.calls_by_token.get(first_follower.token, 0)
                if first_follower else 0,
                "follower_handovers": self.count_in_logs("reconciler-", "handing over to a fresh follower"),
            },
            "elb": elb,
            "iam": iam.report_of(self.world.iam),
            "lambda": {"reserved_concurrency": self.host.concurrency, "throttled": self.host.throttled,
                       "events_delivered_twice": self.events_duplicated},
            "route_changes": [
                {"t_ms": self.log.at(t), "route": names.get(a, a).replace("-", " "), "to": fmt_route(r)}
                for t, a, r in self.world.route_events if t >= self.log.t0
            ],
            "messages": self.messages,
            "timeline": self.log.events,
            "logs": os.path.relpath(self.run_dir, ROOT),
        }
        report["passed"] = self.outcome == expected and held
        return report


def print_iam(r, p):
    """The IAM line of a report: calls authorised, and each refusal."""
    i = r.get("iam", {})
    p(f"   IAM              {i.get('calls_authorised', 0)} calls authorised against the templates' roles, "
      f"{len(i.get('refused', []))} refused")
    for x in i.get("refused", [])[:10]:
        p(f"      refused: {x['principal']} {x['action']} on {x['resource']}")
    lam = r.get("lambda")
    if lam:
        p(f"   Lambda           reserved concurrency {lam['reserved_concurrency']}, attempts throttled "
          f"{lam['throttled'] or 0}; EventBridge delivered {lam['events_delivered_twice']} event(s) twice")


def print_report(r, out):
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("")
    p(f"== rehearsal: {r['scenario']} ({r['config']}, {r['tasks']} tasks per task set)")
    p(f"   outcome: {r['outcome']} (expected {r['expected_outcome']})")
    if r["faults"]:
        p(f"   faults           {r['faults']}: injected {r['faults_injected']}")
    if r["crash"]:
        c = r["crash"]
        p(f"   crash            {c['function']} after AWS call #{c['after_call']}: "
          + (f"SIGKILLed after {c['call']}" if c["fired"] else "not reached (fewer calls)"))
    for h, v in r["hooks"].items():
        p(f"   {h:<20} {v['verdict']:<10} {v['duration_ms']:>6} ms  cold start {v['cold_start_ms']:>6} ms  "
          f"{v['aws_calls']:>3} AWS calls  {v['invocations']} invocation(s)"
          + (f", {v['attempts']} attempts ({v['crashed_attempts']} crashed)" if v["attempts"] > v["invocations"] else ""))
    p(f"   requests         public {r['requests']['public']:>6} ({r['failed_requests']['public']} failed)   "
      f"private {r['requests']['private']:>6} ({r['failed_requests']['private']} failed)")
    p(f"   served           public {r['served_by_version']['public']}   private {r['served_by_version']['private']}")
    p(f"   dark time        public {r['public_dark_ms']} ms   private {r['private_dark_ms']} ms")
    if r.get("side_2"):
        s2 = r["side_2"]
        p(f"   side 2 (NLB)     {s2['requests']} requests ({s2['failed_requests']} failed), served "
          f"{s2['served_by_version']}, dark {s2['dark_ms']} ms, behind the public majority at most "
          f"{s2['majority_lag_ms']} ms, flip skew {s2['flip_skew_ms']} ms")
    p(f"   flip skew        {r['flip_skew_ms']} ms (private flip after public flip; CodeDeploy invoked each hook "
      f"{r['hook_latency_s']:g} s after the step before)")
    p(f"   max weight lag   {r['max_weight_lag_ms']} ms (longest time the private weights differed from the public)")
    if r.get("rollback_write_after_calls") is not None:
        p(f"   rollback         the reconciler put the private route back after {r['rollback_write_after_calls']} AWS "
          "call(s)")
    e = r["elb"]
    p(f"   ELB budget       our Describe calls {e['total']['describe_per_s']}/s on average, peak "
      f"{e['total']['describe_peak_1s']} in 1 s, {e['total']['throttled']} throttled; "
      + ", ".join(f"{n} {v['describe_calls']}" for n, v in e["functions"].items())
      + (f"; neighbour {e['neighbour']['throttles']} throttled of {e['neighbour']['calls']}" if "neighbour" in e else ""))
    print_iam(r, p)
    p(f"   reconciler       {r['reconciler']['invocations']} invocations, {r['reconciler']['aws_calls']} AWS calls, "
      f"{r['reconciler']['follower_handovers']} follower hand-over(s)")
    p("   invariants:")
    for k, v in r["invariants"].items():
        p(f"     {'held  ' if v else 'BROKEN'} {k}")
    for n in r["notes"]:
        p(f"     note: {n}")
    for m in r["messages"]:
        p(f"   message: {m}")
    if not r["expected_invariants_held"]:
        p(f"   expected broken: {', '.join(r['expected_broken'])} (what the scenario shows; every other invariant "
          "holds)")
    p(f"   logs: {r['logs']}")
    p(f"   RESULT: {'PASS' if r['passed'] else 'FAIL'}")


def main():
    ap = argparse.ArgumentParser(description="Rehearse a CodeDeploy ECS blue/green deployment on loopback.")
    ap.add_argument("--scenario", default="happy", choices=sorted(SCENARIOS) + ["fleet"])
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--config", choices=sorted(CONFIGS))
    ap.add_argument("--json", action="store_true", help="print one JSON object (the timeline goes to stderr)")
    ap.add_argument("--list", action="store_true", help="list the scenarios")
    ap.add_argument("--faults", default="", help="inject faults into the functions' AWS calls, e.g. "
                    "'elbv2=throttle:0.3,dynamodb=5xx:0.1,codedeploy=reset:0.05' ('*' for every service)")
    ap.add_argument("--crash", metavar="FUNCTION:N", help="SIGKILL the first attempt of FUNCTION's first invocation "
                    "right after its N-th AWS call, e.g. after-allow-traffic:3; Lambda's retry runs it again")
    ap.add_argument("--matrix", action="store_true", help="every scenario under every fault profile, and under a "
                    "crash at every step")
    ap.add_argument("--quick", action="store_true", help="with --matrix: a few cells (what CI runs)")
    ap.add_argument("--jobs", type=int, default=1, help="with --matrix: rehearsals run side by side")
    ap.add_argument("--only", metavar="SCENARIO,...", help="with --matrix: only these scenarios' cells")
    ap.add_argument("--neighbour", type=float, metavar="PER_S",
                    help="another client in the account reads ELB this many times a second (default: none; 4 in "
                    "the fleet)")
    ap.add_argument("--services", type=int, default=20, help="fleet: bindings on the one installation")
    ap.add_argument("--deployments", type=int, default=5, help="fleet: deployments running at once (0: an idle "
                                                                "fleet, with --idle)")
    ap.add_argument("--together", action="store_true", help="fleet: every deployment a canary, their moves in the "
                    "same second and later than their interval by a delay no follower knows; with a neighbour "
                    "rewriting a rule of the shared internal ALB every 2 s")
    ap.add_argument("--idle", type=float, default=None, metavar="MINUTES",
                    help="fleet with --deployments 0: how many of CodeDeploy's minutes to watch the idle fleet")
    ap.add_argument("--minute", type=float, default=None, metavar="SECONDS",
                    help="how many seconds one of CodeDeploy's minutes lasts (default 1; 10 in the fleet)")
    ap.add_argument("--reconciler-timeout", type=float, default=None, metavar="SECONDS",
                    help="the reconciler's Lambda timeout (default 10, which forces follower hand-overs; 60 in the "
                         "fleet; the template's is 900)")
    ap.add_argument("--elb-buckets", choices=sorted(standin.BUCKET_SETTINGS), default="current",
                    help="the account's ELB buckets: current (Describe* 200 refilled at 50/s, Register/Deregister 20 at "
                         "4/s, Modify* 20 at 3/s, as documented) or tight (Describe* 40 at 10/s, writes 10 at 2/s)")
    ap.add_argument("--elb-reads-per-s", type=float, default=None, metavar="B", help="the installation's ELB read "
                    "budget (BLUEGREEN_MIRROR_ELB_READS_PER_S; default: the functions' own)")
    ap.add_argument("--hook-latency", type=float, default=None, metavar="SECONDS",
                    help=f"CodeDeploy's delay between a lifecycle step and its next hook's invocation (default "
                         f"{HOOK_LATENCY_S:g}, or the scenario's; seconds on AWS)")
    ap.add_argument("--template-timeouts", action="store_true", help="the functions' timeouts as the template sets "
                    "them (AfterAllowTraffic 300 s, the others 900 s), for outages a function may wait out")
    ap.add_argument("--template", metavar="FILE.yaml", help="the installation's template, whose roles IAM gives the "
                    "functions (default: infra/template.yaml; the fleet's infra/fleet.yaml)")
    ap.add_argument("--report", metavar="FILE.html", help="also draw the deployment: one self-contained HTML page")
    ap.add_argument("--lane", type=int, default=None, help="the loopback lane (tasks on 127.L.x.x); default: the "
                    "lowest one no other rehearsal on this machine holds")
    args = ap.parse_args()
    if not 0 <= (args.lane or 0) <= 254 or args.jobs < 1:
        ap.error("--lane must be in 0..254 and --jobs at least 1")
    if args.matrix:
        import matrix
        return matrix.matrix(args)
    try:
        standin.Faults(args.faults)
        if args.crash:
            parse_crash(args.crash)
    except ValueError as e:
        ap.error(str(e))
    if args.list:
        for name, spec in SCENARIOS.items():
            print(f"{name:<16} {spec['about']}")
        print(f"{'fleet':<16} {FLEET_ABOUT}")
        return 0
    if not 1 <= args.tasks <= 250:
        ap.error("--tasks must be between 1 and 250")
    procs.install_cleanup()
    # Side by side with any other rehearsal on this machine: each holds a lane of its own.
    args.lane = procs.claim_lane(args.lane)
    random.seed(7)
    out = sys.stderr if args.json else sys.stdout
    if args.scenario == "fleet":
        import fleet
        try:
            report = fleet.from_args(args, out)
        except ValueError as e:
            ap.error(str(e))
        finally:
            procs.kill_all()
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            fleet.print_fleet(report, out)
        return 0 if report["passed"] else 1
    try:
        r = Rehearsal(args.scenario, args.tasks, args.config, out, args.faults, args.crash, args.lane)
        r.neighbour_per_s, r.elb_buckets, r.elb_reads_per_s = args.neighbour or 0.0, args.elb_buckets, args.elb_reads_per_s
        r.minute_s = args.minute or MINUTE_S
        if args.hook_latency is not None:
            r.hook_latency_s = args.hook_latency
        r.template, r.template_timeouts = args.template, args.template_timeouts
        if args.reconciler_timeout:
            r.reconciler_timeout_s = args.reconciler_timeout
        report = r.run()
        if args.report:
            import picture
            picture.write(r, report, args.report, os.environ.get("BLUEGREEN_MIRROR_BIN_DIR", os.path.join(ROOT, "target", "release")))
    finally:
        procs.kill_all()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, out)
    return 0 if report["passed"] and report["invariants_held"] else 1


if __name__ == "__main__":
    sys.exit(main())
