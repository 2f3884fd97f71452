"""The rehearsal: a whole CodeDeploy ECS blue/green deployment on loopback, played against moto with the hooks'
real release binaries, and a report, with evidence, of whether the private side stayed in lockstep.

    python rehearse.py [--scenario NAME] [--tasks N] [--config AllAtOnce|Canary10Percent|Linear10Percent] [--json]

Minutes of the deployment configs are played as seconds. Exit status 0 only when the outcome is the expected one
and every invariant held."""

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request

import boto3
from botocore.config import Config as BotoConfig

import observe
import procs
import sides
import standin
from budget import elb_report
from lambda_host import RETRY_DELAYS_S, LambdaHost
from probe import Probe

REGION = "eu-west-1"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TASK_PORT = 18080
TERMINATION_WAIT_S = 2.0
HOOK_TIMEOUT_S = 60.0
# Short enough that a linear deployment outlives one follower: hand-over is part of every linear rehearsal.
RECONCILER_TIMEOUT_S = 10.0
# The reconciler's schedule (every minute on AWS), played every few seconds.
SCHEDULE_EVERY_S = 10.0
# CodeDeploy removes the replacement task set a little after rerouting traffic back.
ROLLBACK_REMOVAL_DELAY_S = 2.0
RECONCILER_KEY = "AKIDRECONCILER"

HOOKS = [("AfterInstall", "after-install"), ("BeforeAllowTraffic", "before-allow-traffic"),
         ("AfterAllowTraffic", "after-allow-traffic")]

SCENARIOS = {
    "happy": {"config": "AllAtOnce", "expected": "succeeded",
              "about": "all-at-once deployment; the private side flips with the public one"},
    "canary": {"config": "Canary10Percent", "expected": "succeeded",
               "about": "10% of production traffic, then the rest; the private side flips at AfterAllowTraffic"},
    "linear": {"config": "Linear10Percent", "expected": "succeeded", "crash_follower": True,
               "about": "production traffic in 10% steps; the private side flips at AfterAllowTraffic"},
    "alb-to-nlb": {"config": "AllAtOnce", "expected": "succeeded", "private": "nlb",
                   "about": "public ALB with HTTP target groups, private NLB with TCP target groups (the PrivateLink "
                            "case): production flips to green, the test listener keeps the idle group attached"},
    "two-sides": {"config": "Canary10Percent", "expected": "succeeded", "link": True,
                  "about": "one deployment group behind an internal ALB and an NLB for PrivateLink: both gated, the "
                           "follower moves both (the ALB by weight, the NLB at 50 %), both flipped together"},
    "unhealthy-green": {"config": "AllAtOnce", "expected": "rolled_back", "block_private_green": True,
                        "about": "the private load balancer cannot reach the replacement tasks: the gate fails "
                                 "and CodeDeploy rolls back before production traffic moves"},
    "hook-retry": {"config": "AllAtOnce", "expected": "succeeded", "hook_retry": True,
                   "about": "every hook invoked twice at once, and once more after it reported"},
    "alarm-rollback": {"config": "AllAtOnce", "expected": "rolled_back", "alarm": True,
                       "about": "an alarm after AllowTraffic reroutes the public side back to blue; no hook runs "
                                "then: the reconciler, woken by CodeDeploy's FAILURE event, follows the public side "
                                "back before the replacement tasks go"},
    "scale-out": {"expected": "converged", "between": "scale-out",
                  "about": "between deployments ECS starts two more tasks; the reconciler, woken by ECS task "
                           "events, mirrors them"},
    "task-replaced": {"expected": "converged", "between": "task-replaced",
                      "about": "between deployments ECS replaces a task; the private mirror drains the old one "
                               "with the public side and takes the new one"},
    "missing-binding": {"config": "AllAtOnce", "expected": "rolled_back", "group": "web-bg-unbound",
                        "untouched": True,
                        "expected_message": 'no binding for application "web", deployment group "web-bg-unbound"',
                        "about": "a deployment group with no binding: AfterInstall fails with a clear message, "
                                 "nothing on the private side changes"},
    "access-denied": {"config": "AllAtOnce", "expected": "rolled_back", "faults": "elbv2.RegisterTargets=denied:1",
                      "expected_message": "grant elasticloadbalancing:RegisterTargets on arn:aws:elasticloadbalancing:",
                      "about": "the functions' role lacks elasticloadbalancing:RegisterTargets: AfterInstall fails "
                               "naming the permission to grant, before any traffic moves"},
    "missing-table": {"config": "AllAtOnce", "expected": "rolled_back", "table": "bluegreen-mirror-gone",
                      "expected_message": "the state table bluegreen-mirror-gone does not exist",
                      "about": "the functions are configured with a DynamoDB table that does not exist: AfterInstall "
                               "fails naming the table, before any traffic moves"},
}

CONFIGS = {
    # (first green share, step, minutes between steps, CodeDeploy's name of the configuration)
    "AllAtOnce": (100, 100, 0, "CodeDeployDefault.ECSAllAtOnce"),
    "Canary10Percent": (10, 90, 5, "CodeDeployDefault.ECSCanary10Percent5Minutes"),
    "Linear10Percent": (10, 10, 1, "CodeDeployDefault.ECSLinear10PercentEvery1Minutes"),
}
FLEET_ABOUT = ("one installation, many bindings (--services, default 20), several deployments at once "
               "(--deployments, default 5; AllAtOnce, Canary10Percent, Linear10Percent mixed), a neighbour reading "
               "ELB, the schedule running: all inside the account's ELB buckets, the neighbour never throttled")
# CodeDeploy's minutes, played as seconds; the functions are told (BLUEGREEN_MIRROR_MINUTE_MS) so that the
# follower paces its reads on the same clock.
MINUTE_S = 1.0


class Timeline:
    def __init__(self, out):
        self.t0 = time.monotonic()
        self.events = []
        self.out = out
        self.lock = threading.Lock()

    def at(self, t):
        return round((t - self.t0) * 1000)

    def __call__(self, phase, text):
        t = time.monotonic()
        with self.lock:
            self.events.append({"t_ms": self.at(t), "phase": phase, "event": text})
            print(f"[{(t - self.t0):8.3f}s] {phase:<22} {text}", file=self.out, flush=True)


def short(arn):
    return arn.split("/")[-2] if "targetgroup/" in arn else arn.rsplit("/", 1)[-1]


def fmt_route(route):
    return "[" + ",".join(f"{short(tg)}={w}" for tg, w in route) + "]"


def shares(route):
    live = [(tg, w) for tg, w in route if w > 0]
    if not live and route:
        return {route[0][0]: 1.0}
    total = sum(w for _, w in live)
    return {tg: w / total for tg, w in live} if total else {}


def same_traffic(a, b):
    sa, sb = shares(a), shares(b)
    return sa.keys() == sb.keys() and all(abs(sa[k] - sb[k]) < 1e-9 for k in sa)


def access_key(function):
    """The access key a function signs with: the emulated endpoint tells the functions' calls apart by it."""
    return "AKID" + function.upper().replace("-", "")


# The reconciler started in follow mode by BeforeAllowTraffic (a Lambda Invoke whose payload carries this key).
FOLLOW_KEY = "bluegreen_mirror_follow"


def is_follow(inv):
    """Whether a Lambda attempt is the reconciler in follow mode."""
    return inv is not None and inv.function == "reconciler" and isinstance(inv.event, dict) and FOLLOW_KEY in inv.event


def parse_crash(spec):
    """`FUNCTION:N`: SIGKILL the first attempt of FUNCTION's first invocation right after its N-th AWS call.
    `follower` is the reconciler's first invocation in follow mode."""
    function, _, n = (spec or "").partition(":")
    functions = [f for _, f in HOOKS] + ["reconciler", "follower"]
    if function not in functions or not n.isdigit() or int(n) < 1:
        raise ValueError(f"bad crash {spec!r}: expected FUNCTION:N with FUNCTION in {functions} and N ≥ 1")
    return function, int(n)


class Rehearsal:
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
        # The installation's ELB read budget the functions are told (None: their default, 2 a second).
        self.elb_reads_per_s = None
        # The bindings in the state table (`bluegreen-mirror bindings apply`) rather than the environment.
        self.stored_bindings = False
        # ELB's buckets for the account: the documented ones, or `tight` (the figures before March 2026).
        self.elb_buckets = "current"
        # How ELB spells the NLBs this scenario creates (moto spells them as ALBs).
        self.nlb = standin.NlbSpelling()

    # --- the emulated account --------------------------------------------------------------------------------
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
                    HealthCheckProtocol="HTTP", HealthCheckPath="/health", HealthCheckIntervalSeconds=5,
                    HealthCheckTimeoutSeconds=2,
                    HealthyThresholdCount=2,
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
            self.world.groups[("web", group)] = standin.DeploymentGroup(
                "web", group, ["pub-blue", "pub-green"],
                (self.listeners["public-prod"], self.listeners["public-test"]), ("rehearsal", service))
        self.service = "web"
        self.world.faults = standin.Faults(self.faults)
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

        def fire():
            if self.stopping.is_set():
                return
            self.log("EventBridge", f"{detail_type} {note}-> reconciler")
            self.host.invoke_async("reconciler", event, RECONCILER_KEY)

        self.host.later(delay_s, fire)

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

    # --- ECS, played ---------------------------------------------------------------------------------------
    def task_ip(self, color, i):
        """Blue tasks on 127.L.1.i, green ones on 127.L.2.i; L is the lane, so that rehearsals can run side by side."""
        return f"127.{self.lane}.{1 if color == 'blue' else 2}.{i}"

    def start_tasks(self, color, first=1, count=None):
        task = os.path.join(os.path.dirname(__file__), "task.py")
        ips = []
        for i in range(first, first + (count or self.tasks)):
            ip = self.task_ip(color, i)
            p = procs.spawn([sys.executable, task, ip, str(TASK_PORT), color],
                            stdout=procs.subprocess.DEVNULL, stderr=procs.subprocess.DEVNULL)
            p.task_ip = ip
            self.task_procs[color].append(p)
            ips.append(ip)
        deadline = time.monotonic() + 20
        for ip in ips:
            while True:
                try:
                    urllib.request.urlopen(f"http://{ip}:{TASK_PORT}/health", timeout=0.5).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"task {ip} did not start")
                    time.sleep(0.05)
        return ips

    def stop_task(self, color, ip):
        for p in [p for p in self.task_procs[color] if p.task_ip == ip]:
            procs.kill(p)
            self.task_procs[color].remove(p)

    def stop_tasks(self, color):
        for p in self.task_procs[color]:
            procs.kill(p)
        self.task_procs[color] = []

    def register(self, tg, ips, events=True):
        self.elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": ip, "Port": TASK_PORT} for ip in ips])
        if events:
            for ip in ips:
                self.task_event(ip, "RUNNING", 0.2)

    def deregister(self, tg, ips):
        if ips:
            self.elb.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": ip, "Port": TASK_PORT} for ip in ips])
            for ip in ips:
                self.task_event(ip, "STOPPED", 0.1)

    def wait_healthy(self, tg, ips, timeout_s=15):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = {ip: st for ip, _, st, _ in self.world.target_states(tg)}
            if all(states.get(ip) == "healthy" for ip in ips):
                return True
            time.sleep(0.05)
        return False

    # --- CodeDeploy, played --------------------------------------------------------------------------------
    def set_public(self, listener_key, green_weight):
        blue, green = self.tgs["pub-blue"], self.tgs["pub-green"]
        self.elb.modify_listener(ListenerArn=self.listeners[listener_key], DefaultActions=[
            {"Type": "forward", "ForwardConfig": {"TargetGroups": [
                {"TargetGroupArn": blue, "Weight": 100 - green_weight},
                {"TargetGroupArn": green, "Weight": green_weight}]}}])
        self.log("AllowTraffic" if listener_key == "public-prod" else "AllowTestTraffic",
                 f"public {listener_key.split('-')[1]} route -> {fmt_route(self.world.route(self.listeners[listener_key]))}")

    def run_hook(self, hook, function):
        d = self.deployment
        exec_id = d.new_execution(hook)
        event = {"DeploymentId": d.id, "LifecycleEventHookExecutionId": exec_id}
        key = access_key(function)
        t = time.monotonic()
        self.log(hook, f"invoking {function}")
        invs = [self.host.invoke_async(function, event, key)]
        if self.spec.get("hook_retry"):
            invs.append(self.host.invoke_async(function, event, key))
        status = d.wait_report(exec_id, self.hook_timeout_s + 5)
        # Every attempt, Lambda's retries of a crashed or failed one included (at most three per invocation).
        wait_s = 3 * (self.hook_timeout_s + 5)
        attempts = [a for inv in invs for a in self.host.attempts(inv, wait_s)]
        if self.spec.get("hook_retry"):
            again = self.host.invoke_async(function, event, key)
            attempts += self.host.attempts(again, wait_s)
            invs.append(again)
        calls = [c for c in self.world.calls if c[1] == key and c[0] >= t]
        message = None
        for a in attempts:
            if isinstance(a.response, dict) and a.response.get("message"):
                message = a.response["message"]
            if a.error and not message and not a.crashed:
                message = a.error
        e = d.executions[exec_id]
        by = e["reports_by"]
        # The harness's promise, seen from CodeDeploy: a verdict, and every attempt that ran to its end reported
        # exactly once (a crashed attempt may have reported before it died, never twice).
        reported_once = status is not None and all(
            by.get(a.token, 0) == 1 if (a.response is not None and not a.crashed) else by.get(a.token, 0) <= 1
            for a in attempts)
        self.hook_reports[hook] = {
            "function": function,
            "verdict": status or "NoReport",
            "invocations": len(invs),
            "attempts": len(attempts),
            "crashed_attempts": sum(1 for a in attempts if a.crashed),
            "reports_received": sum(by.values()),
            "reports_rejected_as_already_completed": e["rejected"],
            "every_attempt_reported_once": reported_once,
            "duration_ms": round(max((a.duration_ms or 0) for a in attempts)),
            "cold_start_ms": round(min((a.cold_start_ms or 0) for a in attempts), 1),
            "aws_calls": len(calls),
            "first_attempt_calls": self.world.calls_by_token.get(invs[0].token, 0),
            "message": message,
            "observed": observe.hook_observation(attempts, self.world),
        }
        self.log(hook, f"{function} reported {status or 'nothing (timed out)'} in "
                       f"{self.hook_reports[hook]['duration_ms']} ms, {len(calls)} AWS calls"
                 + (f", {len(invs)} invocations" if len(invs) > 1 else "")
                 + (f", {len(attempts)} attempts" if len(attempts) > len(invs) else "")
                 + (f": {message}" if message and status != "Succeeded" else ""))
        return status == "Succeeded"

    def rollback(self, why, green_ips, traffic_moved):
        self.log("Rollback", why)
        self.deployment.status = "Failed"
        if traffic_moved:
            self.set_public("public-prod", 0)
        self.deployment_event("FAILURE", 0.3)
        if traffic_moved:
            time.sleep(ROLLBACK_REMOVAL_DELAY_S)
        self.deregister(self.tgs["pub-green"], green_ips)
        self.log("Rollback", f"ECS deregistered {len(green_ips)} replacement tasks from pub-green")
        time.sleep(standin.DEREGISTRATION_DELAY_S)
        self.stop_tasks("green")
        self.log("Rollback", "replacement task set removed")
        self.outcome = "rolled_back"

    def play(self):
        group = self.world.groups[("web", self.spec.get("group", "web-bg"))]
        self.service = group.service[1]
        self.deployment = standin.Deployment(self.deployment_id, group)
        self.deployment.config_name = CONFIGS[self.config][3]
        self.world.deployments[self.deployment.id] = self.deployment
        d = self.deployment
        with d.cond:
            d.task_sets = [{"label": "Blue", "tg": "pub-blue", "desired": self.tasks, "running": self.tasks,
                            "weight": 100.0}]
        self.log("BeforeInstall", f"deployment {d.id} of {d.application}/{d.group}, config {self.config}")
        self.deployment_event("START")

        green_ips = self.start_tasks("green")
        if self.spec.get("block_private_green"):
            for ip in green_ips:
                self.world.blocked.add((self.lbs["private"], ip))
            self.log("Install", "scenario: the private load balancer cannot reach the replacement tasks")
        with d.cond:
            d.task_sets.append({"label": "Green", "tg": "pub-green", "desired": self.tasks, "running": self.tasks,
                                "weight": 0.0})
        for ip in green_ips:
            time.sleep(0.1)
            self.register(self.tgs["pub-green"], [ip])
        self.log("Install", f"replacement task set: {len(green_ips)} tasks registered into pub-green")

        if not self.run_hook("AfterInstall", "after-install"):
            return self.rollback("AfterInstall failed", green_ips, False)
        self.wait_healthy(self.tgs["pub-green"], green_ips)
        self.set_public("public-test", 100)
        self.log("AfterAllowTestTraffic", "(no hook of ours)")
        if not self.run_hook("BeforeAllowTraffic", "before-allow-traffic"):
            return self.rollback("BeforeAllowTraffic failed", green_ips, False)

        first, step, minutes, _ = CONFIGS[self.config]
        pause = minutes * self.minute_s
        share = first
        while True:
            self.set_public("public-prod", share)
            with d.cond:
                d.task_sets[0]["weight"], d.task_sets[1]["weight"] = 100.0 - share, float(share)
            if share >= 100:
                break
            time.sleep(pause)
            share = min(100, share + step)
        if not self.run_hook("AfterAllowTraffic", "after-allow-traffic"):
            return self.rollback("AfterAllowTraffic failed", green_ips, True)
        if self.spec.get("alarm"):
            time.sleep(0.5)
            return self.rollback("CloudWatch alarm fired after AllowTraffic", green_ips, True)

        self.log("Termination", f"waiting {TERMINATION_WAIT_S:.0f} s before removing the original task set")
        time.sleep(TERMINATION_WAIT_S)
        blue_ips = [self.task_ip("blue", i) for i in range(1, self.tasks + 1)]
        self.deregister(self.tgs["pub-blue"], blue_ips)
        time.sleep(standin.DEREGISTRATION_DELAY_S)
        self.stop_tasks("blue")
        d.status = "Succeeded"
        self.deployment_event("SUCCESS")
        self.log("Termination", "original task set removed; deployment succeeded")
        self.outcome = "succeeded"

    def play_between(self):
        """ECS changes the service between deployments; only the reconciler can keep the private side right."""
        blue = self.tgs["pub-blue"]
        if self.spec["between"] == "scale-out":
            ips = self.start_tasks("blue", first=self.tasks + 1, count=2)
            self.log("ECS", f"scale out: {len(ips)} more tasks")
            for ip in ips:
                self.register(blue, [ip])
            self.wait_healthy(blue, ips)
        else:
            old = self.task_ip("blue", 1)
            self.log("ECS", f"replacing task {old}")
            self.deregister(blue, [old])
            time.sleep(standin.DEREGISTRATION_DELAY_S)
            self.stop_task("blue", old)
            new = self.start_tasks("blue", first=self.tasks + 1, count=1)
            self.register(blue, new)
            self.wait_healthy(blue, new)
            self.log("ECS", f"task {old} replaced by {new[0]}")
        # Judged in `run`, once the reconciler has handled the events (`settle`).
        self.outcome = None

    def judge_between(self):
        blue = self.tgs["pub-blue"]
        self.outcome = "converged" if self.members(blue) == self.members(self.tgs["prv-blue"]) else "diverged"
        self.log("ECS", f"public {len(self.members(blue))} targets, private {len(self.members(self.tgs['prv-blue']))}")

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
        if self.crash:
            bound += sum(RETRY_DELAYS_S) + len(RETRY_DELAYS_S) * self.reconciler_timeout_s
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
                if a == arn and shares(route).get(green) == 1.0:
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
                worst, since = max(worst, t - since), None
        if since is not None:
            worst = max(worst, time.monotonic() - since)
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

    def apply_bindings(self):
        """Stores the bindings as an operator would: `bluegreen-mirror bindings apply`, which checks each one
        against the account first. Its ELB reads are paced (6 a second here, set for the run) so that applying a
        fleet's bindings does not drain the account's bucket."""
        bin_dir = os.environ.get("BLUEGREEN_MIRROR_BIN_DIR", os.path.join(ROOT, "target", "release"))
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
            "BLUEGREEN_MIRROR_FOLLOWER": "reconciler",
        }
        if self.elb_reads_per_s is not None:
            env["BLUEGREEN_MIRROR_ELB_READS_PER_S"] = f"{self.elb_reads_per_s:g}"
        if not self.stored_bindings:
            env["BLUEGREEN_MIRROR_BINDINGS"] = json.dumps(self.bindings)
        timeouts = {f: self.hook_timeout_s for f in functions}
        timeouts["reconciler"] = self.reconciler_timeout_s
        self.host = LambdaHost(functions, env, self.run_dir, timeouts)
        self.world.invoke = lambda name, payload: self.host.invoke_async(name, payload, RECONCILER_KEY)
        self.stopping = threading.Event()

    def run(self):
        self.log("setup", f"scenario {self.name}: {self.spec['about']}")
        self.start_moto()
        self.provision()
        self.start_standin()
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
            self.play_between() if self.spec.get("between") else self.play()
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
        link = None
        if "link" in self.lbs:
            more, link_stats, link_lag = sides.evaluate(self, shares, same_traffic)
            invariants.update(more)
            link = {"requests": link_stats["requests"], "failed_requests": link_stats["failed_requests"],
                    "served_by_version": link_stats["served_by_version"], "dark_ms": link_stats["dark_ms"],
                    "majority_lag_ms": link_lag}
        for hook in self.hook_reports.values():
            if hook.get("message") and hook["verdict"] != "Succeeded":
                self.messages.append(f"{hook['function']}: {hook['message']}")
        expected = self.spec["expected"]
        expected_inv = self.spec.get("expected_invariants", True)
        held = all(invariants.values())
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
            "faults": self.faults or None,
            "crash": crash,
            "faults_injected": self.world.faults.injected,
            "tasks": self.tasks,
            "outcome": self.outcome,
            "expected_outcome": expected,
            "invariants_held": held,
            "expected_invariants_held": expected_inv,
            "invariants": invariants,
            "notes": stale,
            "private_dark_ms": prv["dark_ms"],
            "public_dark_ms": pub["dark_ms"],
            "flip_skew_ms": self.flip_skew_ms(),
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
            "route_changes": [
                {"t_ms": self.log.at(t), "route": names.get(a, a).replace("-", " "), "to": fmt_route(r)}
                for t, a, r in self.world.route_events if t >= self.log.t0
            ],
            "messages": self.messages,
            "timeline": self.log.events,
            "logs": os.path.relpath(self.run_dir, ROOT),
        }
        report["passed"] = (self.outcome == expected and held == expected_inv)
        return report


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
          f"{s2['majority_lag_ms']} ms")
    p(f"   flip skew        {r['flip_skew_ms']} ms (private flip after public flip)")
    p(f"   max weight lag   {r['max_weight_lag_ms']} ms (longest time the private weights differed from the public)")
    if r.get("rollback_write_after_calls") is not None:
        p(f"   rollback         the reconciler put the private route back after {r['rollback_write_after_calls']} AWS "
          "call(s)")
    e = r["elb"]
    p(f"   ELB budget       our Describe calls {e['total']['describe_per_s']}/s on average, peak "
      f"{e['total']['describe_peak_1s']} in 1 s, {e['total']['throttled']} throttled; "
      + ", ".join(f"{n} {v['describe_calls']}" for n, v in e["functions"].items())
      + (f"; neighbour {e['neighbour']['throttles']} throttled of {e['neighbour']['calls']}" if "neighbour" in e else ""))
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
        p("   expected: invariants do not all hold in this scenario yet (see the scenario's description)")
    p(f"   logs: {r['logs']}")
    p(f"   RESULT: {'PASS' if r['passed'] else 'FAIL'}")


CRASH = "crash-every-step"
PROFILES = {"none": "", "throttle-30%": "*=throttle:0.3", "5xx-10%": "*=5xx:0.1", "resets-5%": "*=reset:0.05",
            CRASH: None}
# (scenario, profile, functions to crash: None for every function the scenario runs)
QUICK_MATRIX = [("happy", "throttle-30%", None), ("unhealthy-green", "throttle-30%", None),
                ("alarm-rollback", "5xx-10%", None), ("alarm-rollback", "throttle-30%", None),
                ("linear", "resets-5%", None), ("two-sides", "throttle-30%", None),
                ("happy", CRASH, ["after-allow-traffic"])]


def run_one(scenario, tasks, faults="", crash=None, lane=0):
    """One rehearsal in its own process; its JSON report, or a failed one that carries the process's stderr."""
    args = [sys.executable, os.path.abspath(__file__), "--scenario", scenario, "--json", "--faults", faults,
            "--tasks", str(tasks), "--lane", str(lane)]
    if crash:
        args += ["--crash", crash]
    p = subprocess.run(args, capture_output=True, timeout=900)
    try:
        return json.loads(p.stdout)
    except ValueError:
        return {"outcome": "failed", "expected_outcome": SCENARIOS[scenario]["expected"], "invariants_held": False,
                "private_dark_ms": None, "failed_requests": {}, "faults_injected": {}, "hooks": {},
                "reconciler": {}, "messages": [p.stderr.decode(errors="replace")[-500:]]}


def cell_problems(r):
    """Why a cell's run fails the matrix: the outcome it would have had without faults, private dark time 0, no
    private request failed where no public one did, every invariant held (DynamoDB consistent with ELB too)."""
    fr = r.get("failed_requests", {})
    out = []
    if r["outcome"] != r["expected_outcome"]:
        out.append(f"outcome {r['outcome']} (expected {r['expected_outcome']})")
    if not r["invariants_held"]:
        out.append("broken: " + ", ".join(k for k, v in r.get("invariants", {}).items() if not v))
    if r["private_dark_ms"] != 0:
        out.append(f"private dark {r['private_dark_ms']} ms")
    if fr.get("private", 0) and not fr.get("public", 0):
        out.append(f"{fr['private']} private requests failed")
    side_2 = r.get("side_2") or {}
    if side_2.get("failed_requests") and not fr.get("public", 0):
        out.append(f"{side_2['failed_requests']} requests failed on private side 2")
    return out + [m for m in r.get("messages", []) if out]


class Lanes:
    """Loopback lanes (127.L.x.x) for rehearsals that run side by side."""

    def __init__(self, n):
        self.free = list(range(n))
        self.cond = threading.Condition()

    def run(self, *args, **kwargs):
        with self.cond:
            self.cond.wait_for(lambda: self.free)
            lane = self.free.pop()
        try:
            return run_one(*args, **kwargs, lane=lane)
        finally:
            with self.cond:
                self.free.append(lane)
                self.cond.notify()


# The follower repeats one cycle (read the public route, mirror it, renew its lease) for the whole deployment,
# about 140 calls in a linear rehearsal: every call of its first cycles, then every 8th.
FOLLOWER_EVERY_STEP_UNTIL = 24
FOLLOWER_STRIDE = 8


def crash_cell(scenario, tasks, functions, lanes, pool):
    """Crash at every step: a clean run counts the AWS calls each function's first attempt makes; then one
    rehearsal per function and per n kills that attempt right after its n-th call (n = 1 … count). The cell passes
    when every one of those rehearsals does."""
    clean = lanes.run(scenario, tasks)
    if SCENARIOS[scenario].get("between"):
        plan = [("reconciler", clean.get("reconciler", {}).get("first_attempt_calls", 0))]
    else:
        plan = [(h["function"], h["first_attempt_calls"]) for h in clean.get("hooks", {}).values()]
        if SCENARIOS[scenario].get("crash_follower"):
            plan.append(("follower", clean.get("reconciler", {}).get("first_follower_attempt_calls", 0)))
    plan = [(f, n) for f, n in plan if functions is None or f in functions]
    points = [f"{f}:{n}" for f, count in plan for n in range(1, count + 1)
              if f != "follower" or n <= FOLLOWER_EVERY_STEP_UNTIL or n % FOLLOWER_STRIDE == 0]
    reports = list(pool.map(lambda point: lanes.run(scenario, tasks, crash=point), points))
    failures, fired, broke = [], 0, False
    for point, r in zip(points, reports):
        fired += bool((r.get("crash") or {}).get("fired"))
        problems = cell_problems(r)
        if problems:
            failures.append(f"{point} ({(r.get('crash') or {}).get('call')}): {'; '.join(problems)[:300]}")
            broke = broke or not r["invariants_held"]
    clean_problems = cell_problems(clean)
    if clean_problems:
        failures.insert(0, "without a crash: " + "; ".join(clean_problems)[:300])
    return {"scenario": scenario, "faults": CRASH, "outcome": clean["outcome"], "expected": clean["expected_outcome"],
            "invariants_held": not broke and clean["invariants_held"], "crash_points": len(points),
            "crashes_fired": fired, "crash_plan": dict(plan), "passed": not failures, "messages": failures}


def matrix(args):
    """Runs scenarios under fault profiles, each rehearsal in its own process, and checks every cell (see
    cell_problems). `--jobs` runs that many rehearsals side by side, each on its own loopback lane."""
    from concurrent.futures import ThreadPoolExecutor

    cells = QUICK_MATRIX if args.quick else [(s, p, None) for s in SCENARIOS for p in PROFILES]
    if args.only:
        cells = [c for c in cells if c[0] in args.only.split(",")]
    lanes = Lanes(args.jobs)
    def fault_cell(scenario, profile):
        r = lanes.run(scenario, args.tasks, PROFILES[profile])
        problems = cell_problems(r)
        return {"scenario": scenario, "faults": profile, "outcome": r["outcome"], "expected": r["expected_outcome"],
                "invariants_held": r["invariants_held"], "private_dark_ms": r["private_dark_ms"],
                "failed_requests": r.get("failed_requests", {}),
                "faults_injected": sum(r.get("faults_injected", {}).values()), "passed": not problems,
                "messages": problems}

    def show(row):
        detail = (f"{row['crashes_fired']}/{row['crash_points']} crash points" if row["faults"] == CRASH
                  else f"injected {row['faults_injected']:>4}")
        print(f"{row['scenario']:<16} {row['faults']:<17} {row['outcome']:<12} {detail:<22} "
              f"{'PASS' if row['passed'] else 'FAIL'}", file=sys.stderr, flush=True)

    rows = [None] * len(cells)
    with ThreadPoolExecutor(args.jobs) as pool:
        # Fault cells are single rehearsals: queue them all. Crash cells fan out into the same pool from here.
        pending = {}
        for i, (scenario, profile, _) in enumerate(cells):
            if profile != CRASH:
                pending[i] = pool.submit(fault_cell, scenario, profile)
                pending[i].add_done_callback(lambda f: show(f.result()))
        for i, (scenario, profile, functions) in enumerate(cells):
            if profile == CRASH:
                rows[i] = crash_cell(scenario, args.tasks, functions, lanes, pool)
                show(rows[i])
        for i, f in pending.items():
            rows[i] = f.result()
    failed = sum(1 for r in rows if not r["passed"])
    if args.json:
        print(json.dumps({"matrix": rows}, indent=2))
    else:
        for r in rows:
            if not r["passed"]:
                print(f"FAIL {r['scenario']} under {r['faults']}: {' | '.join(r['messages'])[:1500]}")
        print(f"matrix: {len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


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
    ap.add_argument("--report", metavar="FILE.html", help="also draw the deployment: one self-contained HTML page")
    ap.add_argument("--lane", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not 0 <= args.lane <= 254 or args.jobs < 1:
        ap.error("--lane must be in 0..254 and --jobs at least 1")
    if args.matrix:
        return matrix(args)
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
    random.seed(7)
    out = sys.stderr if args.json else sys.stdout
    if args.scenario == "fleet":
        import fleet
        try:
            idle = args.deployments == 0
            f = fleet.Fleet(args.services, args.deployments, min(args.tasks, 2), 4.0 if args.neighbour is None
                            else args.neighbour, args.minute or (12.0 if idle else 10.0), out, args.lane,
                            args.idle)
            f.reconciler_timeout_s = args.reconciler_timeout
            f.main.elb_buckets = args.elb_buckets
            report = f.run()
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
        r.neighbour_per_s = args.neighbour or 0.0
        r.elb_buckets = args.elb_buckets
        r.minute_s = args.minute or MINUTE_S
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
