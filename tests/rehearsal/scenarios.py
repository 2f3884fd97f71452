"""What the rehearsal plays: its scenarios, CodeDeploy's deployment configurations, its timings on loopback, and
the small helpers every part of it shares (routes as weights, the functions' access keys, the timeline)."""

import os
import threading
import time


REGION = "eu-west-1"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TASK_PORT = 18080
TERMINATION_WAIT_S = 2.0
# AWS's seconds as the rehearsal plays them: a target group's timing (its health check interval and thresholds,
# its deregistration delay) and CodeDeploy's termination wait, given in AWS's seconds or minutes, pass this many
# times faster here, so that the default group's 300 s drain lasts 1 s (Lambda's retry waits are played at the same
# scale, lambda_host.RETRY_DELAYS_S).
TIME_SCALE = 1.0 / 300
HOOK_TIMEOUT_S = 60.0
# CodeDeploy's latency between a lifecycle step and its next hook's invocation (Lambda's invoke included): on AWS
# seconds, which no page promises. The private side must follow the public reroute, not the hook that comes after
# it; `--hook-latency` sets it (scripts/bench measures the flip skew at 0, 5 and 30 s).
HOOK_LATENCY_S = 2.0
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
    "happy": {"config": "AllAtOnce", "expected": "succeeded", "crash_follower": True,
              "about": "all-at-once deployment; the follower flips the private side when it reads the public reroute, "
                       "AfterAllowTraffic verifies"},
    "canary": {"config": "Canary10Percent", "expected": "succeeded",
               "about": "10% of production traffic, then the rest; the private side flips at AfterAllowTraffic"},
    "linear": {"config": "Linear10Percent", "expected": "succeeded", "crash_follower": True,
               "about": "production traffic in 10% steps; the private side flips at AfterAllowTraffic"},
    "alb-to-nlb": {"config": "AllAtOnce", "expected": "succeeded", "private": "nlb",
                   "about": "public ALB with HTTP target groups, private NLB with TCP target groups (the PrivateLink "
                            "case): production flips to green, the test listener keeps the idle group attached"},
    "nlb-settle": {"config": "AllAtOnce", "expected": "succeeded", "private": "nlb", "termination_wait_s": 0.2,
                   "hook_latency_s": 0.0, "expected_broken": ["I4_never_dark"], "matrix": False,
                   "expected_log": ("after-install-", "may keep reaching the original tasks"),
                   "about": "a private NLB whose deployment group terminates the original tasks 1 minute after "
                            "rerouting, while the NLB's traffic takes 10 to follow its listener: AfterInstall warns, "
                            "and the private clients' requests fail from the moment the original tasks go until the "
                            "NLB has moved (alb-to-nlb, with CodeDeploy's 10 minutes, loses none)"},
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
    "bad-config": {"config": "AllAtOnce", "expected": "rolled_back", "untouched": True,
                   "bindings_env": '{"bindings": [{"application": "web", "deployment_group": "web-bg", "pairs": []}]}',
                   "expected_message": "AfterInstall could not start, so it mirrors nothing",
                   "about": "the functions' BLUEGREEN_MIRROR_BINDINGS is invalid: AfterInstall cannot start, and "
                            "reports Failed at once with what to fix instead of leaving CodeDeploy to wait for its "
                            "timeout; nothing on the private side changes"},
    "observe": {"config": "Canary10Percent", "expected": "succeeded", "observe": True, "block_private_green": True,
                "expected_broken": ["I4_never_dark"], "matrix": False,
                "about": "shadow mode: the binding observes while the private load balancer cannot reach the replacement "
                         "tasks; the deployment succeeds, nothing on the private side changes, and its record lists "
                         "what the functions would have done, in order; then the binding is enforced and the next "
                         "deployment is mirrored as usual (the private side, left where it was while observed, goes "
                         "dark once the original tasks go: observing suits a private side that serves nobody yet)"},
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
        # Told each phase as it is logged (the fault windows that start at a phase).
        self.on_phase = None

    def at(self, t):
        return round((t - self.t0) * 1000)

    def __call__(self, phase, text):
        t = time.monotonic()
        with self.lock:
            self.events.append({"t_ms": self.at(t), "phase": phase, "event": text})
            print(f"[{(t - self.t0):8.3f}s] {phase:<22} {text}", file=self.out, flush=True)
        if self.on_phase:
            self.on_phase(phase)


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

