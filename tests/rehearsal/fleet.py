"""The fleet scenario: one installation of the functions serving many bindings in one account, several
deployments at once (AllAtOnce, Canary10Percent and Linear10Percent mixed), a neighbour reading ELB, and the
schedule running, all inside the account's ELB buckets (standin.ElbBuckets).

Every service has its own public ALB (listeners :80 and :8080, as CodeDeploy's deployment group names them) and
its own pair of target groups on each side; the private side is one shared internal ALB, each service reached
through a listener rule (host header) on its production and test listeners. Each deploying service is played by
the same per-deployment player as the single scenarios (rehearse.Rehearsal.play), sharing moto, the emulated
endpoint, the Lambda host and the timeline.

It passes when every deployment ends as expected with every invariant held, private dark time 0, private weights
within a second of the public ones at every step, and the neighbour suffers no throttle.

With no deployment (`--deployments 0 --idle MINUTES`) it watches the idle fleet instead: only the schedule runs,
for that many of CodeDeploy's minutes, everything on the rehearsal's clock (one minute lasts `--minute` seconds,
default 12: the schedule fires once a minute as on AWS, and the functions' ELB budget is scaled by the same
factor, so calls per emulated second are the figure AWS would see). It passes when nothing was throttled and
every binding the sweep checked was found in sync."""

import json
import os
import random
import threading
import time

import observe
import codedeploy
import iam
import rehearse
import standin
from probe import Probe

CONFIG_MIX = ("Linear10Percent", "Canary10Percent", "AllAtOnce")
# The installation's ELB read budget as fleet.yaml deploys it by default (tests/infra/check_infra.py holds that to
# the functions' own default in shared/src/config.rs).
DEFAULT_ELB_READS_PER_S = float(iam.load_template(os.path.join(rehearse.ROOT, "infra", "fleet.yaml"))
                                ["Parameters"]["ElbReadsPerSecond"]["Default"])
# The shortest of the templates' hook timeouts (AfterAllowTraffic's; AfterInstall and BeforeAllowTraffic have 900).
HOOK_TIMEOUT_S = 300.0


class Fleet:
    def __init__(self, services, deployments, tasks, neighbour_per_s, minute_s, out, lane=0, idle_minutes=None,
                 together=False):
        if not 0 <= deployments <= services or not 1 <= services <= 120:
            raise ValueError("--services must be in 1..=120 and --deployments between 0 and --services")
        if (deployments == 0) != (idle_minutes is not None):
            raise ValueError("--idle MINUTES goes with --deployments 0, and only with it")
        self.n, self.d, self.tasks = services, deployments, tasks
        # The shared parts (moto, the endpoint, the Lambda host, the timeline) live on one Rehearsal.
        self.main = rehearse.Rehearsal("happy", tasks, None, out, lane=lane)
        self.main.name = "fleet"
        self.main.concurrent_deployments = deployments
        self.main.minute_s = minute_s
        self.main.poll_ms = 1000
        # The schedule, played every 15 s (every minute on AWS): the sweep sizes its slice to its share of the
        # budget per run, so the cadence changes which bindings a run takes, not what the sweep costs a second.
        self.main.schedule_s = 15.0
        self.idle_minutes = idle_minutes
        self.reconciler_timeout_s = None
        if idle_minutes is not None:
            # Everything on the rehearsal's clock: the schedule once a minute, the budget scaled to match.
            self.main.schedule_s = minute_s
            self.read_budget(None)
        if together and not deployments:
            raise ValueError("--together needs deployments")
        self.together = together
        self.neighbour_per_s = neighbour_per_s
        self.stagger_s = 8.0
        self.log = self.main.log
        self.services = []

    def provision(self):
        m = self.main
        elb, vpc, subnets = m.account()
        private = elb.create_load_balancer(Name="private", Subnets=subnets, Scheme="internal",
                                           Type="application")["LoadBalancers"][0]["LoadBalancerArn"]
        fixed = [{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}]
        private_listeners = {name: elb.create_listener(LoadBalancerArn=private, Protocol="HTTP", Port=port,
                                                       DefaultActions=fixed)["Listeners"][0]["ListenerArn"]
                             for name, port in (("prod", 80), ("test", 8080))}
        if self.together:
            # A rule of another tool's on the shared internal ALB, which a neighbour rewrites every 2 s.
            self.neighbour_rule = elb.create_rule(
                ListenerArn=private_listeners["prod"], Priority=1000, Actions=fixed,
                Conditions=[{"Field": "host-header", "HostHeaderConfig": {"Values": ["other.internal"]}}])["Rules"][0]["RuleArn"]
        bindings = []
        for k in range(1, self.n + 1):
            svc = rehearse.Rehearsal("happy", self.tasks, None, m.log.out, lane=m.lane)
            name = f"svc{k:02d}"
            public = elb.create_load_balancer(Name=f"pub-{name}", Subnets=subnets, Scheme="internet-facing",
                                              Type="application")["LoadBalancers"][0]["LoadBalancerArn"]
            tgs = {}
            for side in ("pub", "prv"):
                for color in ("blue", "green"):
                    tgs[f"{side}-{color}"] = elb.create_target_group(
                        Name=f"{side}-{color}-{name}", Protocol="HTTP", Port=rehearse.TASK_PORT, VpcId=vpc,
                        TargetType="ip", HealthCheckPath="/health")["TargetGroups"][0]["TargetGroupArn"]
            forward = [{"Type": "forward", "ForwardConfig": {"TargetGroups": [
                {"TargetGroupArn": tgs["pub-blue"], "Weight": 100},
                {"TargetGroupArn": tgs["pub-green"], "Weight": 0}]}}]
            listeners = {f"public-{n}": elb.create_listener(LoadBalancerArn=public, Protocol="HTTP", Port=port,
                                                            DefaultActions=forward)["Listeners"][0]["ListenerArn"]
                         for n, port in (("prod", 80), ("test", 8080))}
            for n in ("prod", "test"):
                listeners[f"private-{n}"] = elb.create_rule(
                    ListenerArn=private_listeners[n], Priority=k,
                    Conditions=[{"Field": "host-header", "HostHeaderConfig": {"Values": [f"{name}.internal"]}}],
                    Actions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": [
                        {"TargetGroupArn": tgs["prv-blue"], "Weight": 100},
                        {"TargetGroupArn": tgs["prv-green"], "Weight": 0}]}}])["Rules"][0]["RuleArn"]
            svc.name, svc.tgs, svc.listeners = name, tgs, listeners
            svc.lbs = {"public": public, "private": private}
            svc.group, svc.service = f"{name}-bg", name
            svc.spec = {**svc.spec, "group": svc.group}
            svc.deployment_id = f"d-FLEET{k:04d}"
            svc.minute_s = m.minute_s
            svc.hook_timeout_s = HOOK_TIMEOUT_S
            # Each service's tasks on their own loopback block: blue 127.L.(10+2k).i, green the next one.
            svc.task_ip = (lambda k_: lambda color, i: f"127.{m.lane}.{8 + 2 * k_ + (color == 'green')}.{i}")(k)
            self.services.append(svc)
            bindings.append({
                "application": "web", "deployment_group": svc.group,
                "pairs": [{"public_target_group": tgs["pub-blue"], "private_target_group": tgs["prv-blue"]},
                          {"public_target_group": tgs["pub-green"], "private_target_group": tgs["prv-green"]}],
                "private_production_route": {"rule": listeners["private-prod"]},
                "private_test_route": {"rule": listeners["private-test"]},
                "health_timeout_seconds": 30,
            })
        m.bindings = {"bindings": bindings}
        # The fleet installation may change only private resources carrying its tag.
        m.tag_managed([tg for svc in self.services for k, tg in svc.tgs.items() if k.startswith("prv")]
                      + [svc.listeners[k] for svc in self.services for k in ("private-prod", "private-test")])
        m.tgs = {k: v for s in self.services for k, v in s.tgs.items()}
        self.log("setup", f"provisioned {self.n} services: a public ALB and two target groups each, one shared "
                          f"internal ALB with a production and a test rule per service, the table; "
                          f"{len(json.dumps(m.bindings))} bytes of bindings")

    def start_standin(self):
        m = self.main
        m.world = standin.World(m.moto_url, m.client("elbv2", m.moto_url, "STANDIN"))
        for svc in self.services:
            for key, tg in svc.tgs.items():
                m.world.tg_lb[tg] = svc.lbs["public" if key.startswith("pub") else "private"]
            for key, arn in svc.listeners.items():
                m.world.track_route(arn, svc.lbs[key.split("-")[0]])
            m.world.groups[("web", svc.group)] = codedeploy.DeploymentGroup(
                "web", svc.group, [f"pub-blue-{svc.name}", f"pub-green-{svc.name}"],
                (svc.listeners["public-prod"], svc.listeners["public-test"]), ("rehearsal", svc.service),
                svc.termination_wait_s)
        m.world.on_call = None
        m.world.buckets = standin.ElbBuckets(standin.BUCKET_SETTINGS[m.elb_buckets])
        # Dozens of target groups on two cores: health checks every half second (an ALB's are every 5 to 30 s).
        m.world.health_interval_s = 0.5 if self.d else 2.0
        m.server = standin.serve(m.world)
        m.endpoint = f"http://127.0.0.1:{m.server.server_address[1]}"
        m.elb = m.client("elbv2", m.endpoint, "CODEDEPLOY")
        self.log("setup", f"emulated AWS endpoint {m.endpoint}, ELB buckets {m.elb_buckets} {m.world.buckets.figures}")

    def read_budget(self, per_s):
        """The installation's ELB read budget: `per_s` (None: the functions' default), scaled to the rehearsal's clock
        when the idle fleet plays everything on it."""
        if self.idle_minutes is not None:
            self.main.elb_reads_per_s = (per_s or DEFAULT_ELB_READS_PER_S) * 60.0 / self.main.minute_s
        elif per_s:
            self.main.elb_reads_per_s = per_s

    def share(self, svc):
        """The shared parts, handed to a service's player."""
        m = self.main
        for attr in ("world", "moto_url", "endpoint", "elb", "host", "stopping", "table", "ddb", "log", "run_dir"):
            setattr(svc, attr, getattr(m, attr))

    def run(self):
        m = self.main
        self.log("setup", f"fleet: {self.n} bindings on one installation, {self.d} deployments at once, "
                          f"a neighbour at {self.neighbour_per_s:g} ELB reads/s, CodeDeploy's minute played as "
                          f"{m.minute_s:g} s")
        m.start_moto()
        self.provision()
        self.start_standin()
        m.spec = {**m.spec, "table": m.table}
        # The template gives the reconciler Lambda's longest timeout; the single scenarios shorten it to force a
        # follower hand-over, which the fleet does not need to prove again.
        m.reconciler_timeout_s = self.reconciler_timeout_s or 60.0
        # The hooks as the templates time them out (AfterAllowTraffic's 300 s, the shortest): a fleet's
        # AfterInstall and BeforeAllowTraffic wait their turn in the installation's read lane, which is the point.
        m.hook_timeout_s = HOOK_TIMEOUT_S
        # One installation for the whole fleet: its bindings would not fit in Lambda's 4 KB environment.
        m.apply_bindings()
        # An operator applies bindings long before deployments start: let the account's bucket refill (4 s from
        # empty) after the apply's paced reads.
        time.sleep(4.0)
        m.start_host()
        deploying = self.services[:self.d]
        for svc in self.services:
            self.share(svc)
            # The services that stay idle run one task each: they cost the sweep the same reads, and the two
            # cores less.
            svc.tasks = self.tasks if svc in deploying else 1
            ips = svc.start_tasks("blue")
            svc.register(svc.tgs["pub-blue"], ips, events=False)
            svc.register(svc.tgs["prv-blue"], ips, events=False)
        for svc in self.services:
            if not svc.wait_healthy(svc.tgs["pub-blue"], [svc.task_ip("blue", i) for i in range(1, svc.tasks + 1)]):
                raise RuntimeError(f"{svc.name}: blue tasks did not become healthy")
        self.log("setup", f"{sum(s.tasks for s in self.services)} blue tasks serving on both sides")
        if self.together:
            # Every deployment a canary, each public move waiting for the others': the ten-percent moves in the same
            # second, then the hundred-percent ones, each time later than the interval by a delay no follower can
            # know (up to half the interval).
            pause = rehearse.CONFIGS["Canary10Percent"][2] * m.minute_s
            barrier = threading.Barrier(len(deploying), action=lambda: time.sleep(random.uniform(0, pause / 2)))
        for i, svc in enumerate(deploying):
            svc.config = "Canary10Percent" if self.together else CONFIG_MIX[i % len(CONFIG_MIX)]
            svc.move_together = barrier if self.together else None
            svc.probe = Probe(m.world, {"public": (svc.listeners["public-prod"], svc.lbs["public"]),
                                        "private": (svc.listeners["private-prod"], svc.lbs["private"])},
                              period_s=0.1)
            svc.probe.start()
        m.start_neighbour(self.neighbour_per_s, [tg for s in self.services for tg in s.tgs.values()])
        if self.together and m.neighbour:
            m.neighbour.write_every(self.neighbour_rule, 2.0)
            self.log("setup", "the neighbour also rewrites a rule of its own on the shared internal ALB every 2 s")
        time.sleep(0.5)
        t0 = time.monotonic()
        threading.Thread(target=m.schedule, daemon=True).start()

        def play(svc):
            try:
                svc.play()
            except Exception as e:  # noqa: BLE001 - the report says what went wrong
                svc.outcome = "failed"
                svc.messages.append(f"the rehearsal itself failed: {e!r}")

        if self.idle_minutes is not None:
            return self.watch_idle(t0)
        threads = []
        for i, svc in enumerate(deploying):
            # Pipelines start deployments at their own moments, not in the same second: one every `stagger_s`,
            # all of them shifting traffic at once afterwards. (The rehearsal's tasks start and pass health checks
            # in a second, where ECS takes a minute or more: without a stagger every deployment's hooks would read
            # ELB in the same few seconds, which no account sees.)
            t = threading.Thread(target=play, args=(svc,), daemon=True)
            t.start()
            threads.append(t)
            time.sleep(self.stagger_s)
        for t in threads:
            t.join()
        # The last deployments' ends and stopped tasks are still being handled: judge what they leave, not what they
        # are about to change. The schedule's sweeps go on meanwhile and are not waited for.
        busy = m.host.settle(m.reconciler_timeout_s + 5.0, ignore=lambda inv: isinstance(inv.event, dict)
                              and inv.event.get("source") == "aws.events")
        self.log("end", "every event handled" if not busy else
                 f"{len(busy)} invocations still running after {m.reconciler_timeout_s + 5.0:g} s; judging anyway")
        time.sleep(1.0)
        m.stopping.set()
        for svc in deploying:
            svc.probe.finish()
        if m.neighbour:
            m.neighbour.stop.set()
        elb = m.budget_report(t0)
        m.world.stop.set()
        rows = []
        for svc in deploying:
            invariants, stale, pub, prv = svc.evaluate()
            invariants["every_invocation_reported_once"] = all(
                h["every_attempt_reported_once"] for h in svc.hook_reports.values())
            messages = svc.messages + [f"{h['function']}: {h['message']}" for h in svc.hook_reports.values()
                                       if h.get("message") and h["verdict"] != "Succeeded"]
            rows.append({
                "binding": f"web/{svc.group}", "config": svc.config, "outcome": svc.outcome,
                "expected_outcome": "succeeded", "invariants": invariants, "invariants_held": all(invariants.values()),
                "private_dark_ms": prv["dark_ms"], "failed_requests": {"public": pub["failed_requests"],
                                                                      "private": prv["failed_requests"]},
                "max_weight_lag_ms": svc.max_weight_lag_ms(), "lag_per_step_ms": svc.lag_per_step_ms(),
                "hooks": {h: {"verdict": v["verdict"], "aws_calls": v["aws_calls"], "duration_ms": v["duration_ms"]}
                          for h, v in svc.hook_reports.items()},
                "notes": stale, "messages": messages,
            })
        # What ELB refused the neighbour, counted at the endpoint.
        neighbour_throttles = elb["functions"].get("neighbour", {}).get("throttled", 0)
        worst_lag = max((r["max_weight_lag_ms"] for r in rows), default=0)
        # IAM as fleet.yaml's roles and the operator policy allow: nothing refused.
        refused = m.world.iam.denied() if m.world.iam else []
        passed = (all(r["outcome"] == r["expected_outcome"] and r["invariants_held"] and r["private_dark_ms"] == 0
                      for r in rows)
                  and worst_lag <= 1000 and neighbour_throttles == 0 and not refused)
        return {
            "scenario": "fleet", "services": self.n, "deployments": self.d, "tasks": self.tasks, "together": self.together,
            "minute_s": m.minute_s, "outcome": "succeeded" if passed else "failed", "expected_outcome": "succeeded",
            "passed": passed, "invariants_held": all(r["invariants_held"] for r in rows),
            "private_dark_ms": max((r["private_dark_ms"] for r in rows), default=0),
            "failed_requests": {side: sum(r["failed_requests"][side] for r in rows) for side in ("public", "private")},
            "max_weight_lag_ms": worst_lag, "neighbour_throttles": neighbour_throttles,
            "elb": elb, "waiting_checks": waiting_checks(m),
            "iam": iam.report_of(m.world.iam),
            "lambda": {"reserved_concurrency": m.host.concurrency, "throttled": m.host.throttled,
                       "events_delivered_twice": m.events_duplicated + sum(s.events_duplicated for s in self.services)},
            "deployments_report": rows, "budget_t0_ms": m.log.at(t0),
            "reconciler": {"invocations": sum(1 for i in m.host.invocations if i.function == "reconciler"),
                           "follower_handovers": m.count_in_logs("reconciler-", "handing over to a fresh follower")},
            "timeline": self.log.events, "logs": rehearse.os.path.relpath(m.run_dir, rehearse.ROOT),
        }

    def watch_idle(self, t0):
        m = self.main
        # The schedule's first run comes a minute in: the window holds exactly `idle_minutes` runs.
        t0 += m.minute_s - 0.5
        time.sleep(max(0.0, t0 + self.idle_minutes * m.minute_s - time.monotonic()))
        m.stopping.set()
        if m.neighbour:
            m.neighbour.stop.set()
        elb = m.budget_report(t0)
        m.world.stop.set()
        scale = 60.0 / m.minute_s
        runs = [i for i in m.host.invocations if i.function == "reconciler" and i.started and i.started >= t0]
        checked, changed, failed = set(), [], []
        for inv in runs:
            for done in inv.response if isinstance(inv.response, list) else []:
                checked.add(done.get("binding"))
                if done.get("registered") or done.get("deregistered") or done.get("production") or done.get("test"):
                    changed.append(done.get("binding"))
            if inv.error:
                failed.append(inv.error[:200])
        emulated_s = elb["total"]["seconds"] * scale
        per_s = round(elb["total"]["describe_calls"] / emulated_s, 3)
        throttled = elb["total"]["throttled"] + elb["functions"].get("neighbour", {}).get("throttled", 0)
        refused = m.world.iam.denied() if m.world.iam else []
        passed = throttled == 0 and not changed and not failed and bool(checked) and not refused
        return {
            "scenario": "fleet-idle", "services": self.n, "deployments": 0, "minute_s": m.minute_s,
            "idle_minutes": self.idle_minutes, "outcome": "converged" if passed else "failed",
            "expected_outcome": "converged", "passed": passed, "invariants_held": not changed,
            "describe_per_emulated_s": per_s, "scheduled_runs": len(runs), "bindings_checked": len(checked),
            "bindings_changed": changed, "failures": failed, "throttled": throttled,
            "neighbour_throttles": elb["functions"].get("neighbour", {}).get("throttled", 0),
            "elb": elb, "iam": iam.report_of(m.world.iam),
            "timeline": self.log.events, "logs": rehearse.os.path.relpath(m.run_dir, rehearse.ROOT),
        }


def from_args(args, out):
    """The fleet the command line asks for, run: its report."""
    idle = args.deployments == 0
    f = Fleet(args.services, args.deployments, min(args.tasks, 2), 4.0 if args.neighbour is None else args.neighbour,
              args.minute or (12.0 if idle else 10.0), out, args.lane, args.idle, args.together)
    f.reconciler_timeout_s, f.main.template = args.reconciler_timeout, args.template
    f.main.elb_buckets = args.elb_buckets
    f.read_budget(args.elb_reads_per_s)
    return f.run()


def waiting_checks(m):
    """What the reconciles that wait their turn in the read lane came to: the schedule's sweeps and the deployments'
    ends (an end whose flip is on record waits; one without is counted at once). Per kind: invocations (Lambda's
    retries included), how many stepped aside, the bindings checked to the end, and the `Describe*` calls the
    endpoint counted for them, so that reads spent on checks abandoned half-way show as calls per check above what a
    check costs."""
    with m.world.lock:
        calls = [(c[3], c[2]) for c in m.world.elb_calls]
    per_token = {}
    for token, op in calls:
        if op.startswith("Describe"):
            per_token[token] = per_token.get(token, 0) + 1
    out = {kind: {"invocations": 0, "stepped_aside": 0, "checks": 0, "describe_calls": 0} for kind in ("sweep", "end")}
    for inv in m.host.invocations:
        event = inv.event if isinstance(inv.event, dict) else {}
        if inv.function != "reconciler":
            continue
        if event.get("source") == "aws.events":
            kind = "sweep"
        elif event.get("source") == "aws.codedeploy" and (event.get("detail") or {}).get("state") == "SUCCESS":
            kind = "end"
        else:
            continue
        row = out[kind]
        row["invocations"] += 1
        row["describe_calls"] += per_token.get(inv.token, 0)
        row["checks"] += len(inv.response) if isinstance(inv.response, list) else 0
        aside = any("stepped aside at" in line for line in observe.read_lines(getattr(inv, "log_path", "")))
        row["stepped_aside"] += aside
    for row in out.values():
        row["describe_per_check"] = round(row["describe_calls"] / row["checks"], 1) if row["checks"] else None
    return out


def print_fleet(r, out):
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("")
    if r["scenario"] == "fleet-idle":
        p(f"== rehearsal: idle fleet ({r['services']} bindings, no deployment, {r['idle_minutes']:g} of CodeDeploy's "
          f"minutes, one played as {r['minute_s']:g} s)")
        p(f"   {r['scheduled_runs']} scheduled runs checked {r['bindings_checked']} bindings, changed "
          f"{len(r['bindings_changed'])}, {len(r['failures'])} failed")
        p(f"   ELB Describe calls: {r['describe_per_emulated_s']} per emulated second "
          f"({r['elb']['total']['describe_calls']} in all), throttled {r['throttled']}")
        for f in r["failures"]:
            p(f"      failure: {f}")
        rehearse.print_iam(r, p)
        p(f"   logs: {r['logs']}")
        p(f"   RESULT: {'PASS' if r['passed'] else 'FAIL'}")
        return
    p(f"== rehearsal: fleet ({r['services']} bindings, {r['deployments']} deployments at once, "
      f"CodeDeploy minute = {r['minute_s']:g} s)")
    for d in r["deployments_report"]:
        broken = [k for k, v in d["invariants"].items() if not v]
        p(f"   {d['binding']:<16} {d['config']:<16} {d['outcome']:<10} dark {d['private_dark_ms']} ms  "
          f"max lag {d['max_weight_lag_ms']} ms  " + (f"BROKEN {broken}" if broken else "invariants held"))
        for m in d["messages"]:
            p(f"      message: {m}")
    e = r["elb"]
    p("   ELB Describe calls per function (average per s, peak in 1 s, throttled):")
    for n, v in e["functions"].items():
        p(f"     {n:<22} {v['describe_per_s']:>6}/s  peak {v['describe_peak_1s']:>3}  throttled {v['throttled']}")
    p(f"     {'all our functions':<22} {e['total']['describe_per_s']:>6}/s  peak {e['total']['describe_peak_1s']:>3}  "
      f"throttled {e['total']['throttled']} (writes {e['total'].get('throttled_writes', 0)})  over "
      f"{e['total']['seconds']} s")
    buckets = ", ".join(f"{k} {v['capacity']:g}/{v['refill_per_s']:g} a s" for k, v in e["buckets"].items())
    p(f"   ELB buckets      {buckets}")
    p(f"   neighbour        {r['neighbour_throttles']} throttled")
    rehearse.print_iam(r, p)
    p("   reconciles waiting their turn in the read lane (invocations, stepped aside, bindings checked, Describe "
      "calls, per check):")
    for kind, v in r["waiting_checks"].items():
        p(f"     {kind:<22} {v['invocations']:>4}  aside {v['stepped_aside']:>3}  checked {v['checks']:>3}  "
          f"calls {v['describe_calls']:>4}  per check {v['describe_per_check']}")
    p(f"   logs: {r['logs']}")
    p(f"   RESULT: {'PASS' if r['passed'] else 'FAIL'}")
