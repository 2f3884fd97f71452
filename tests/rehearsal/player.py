"""ECS and CodeDeploy, played: the tasks (processes on loopback), the task sets' registrations, the public
listeners' moves, the lifecycle hooks invoked through the Lambda host and their reports, rollbacks; and ECS changing
a service between deployments. A mixin of `rehearse.Rehearsal`, whose state (the emulated account, the host, the
timeline) it plays on."""

import os
import sys
import threading
import time
import urllib.request

import observe
import procs
import codedeploy
from scenarios import CONFIGS, ROLLBACK_REMOVAL_DELAY_S, TASK_PORT, access_key, fmt_route, short


class Player:
    # Deployments whose moves land together (the fleet's --together): a threading.Barrier each public production
    # move waits at, or None.
    move_together = None
    # The first replacement task's number (a second deployment's tasks come after the first's).
    green_first = 1

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
        if self.hook_latency_s > 0:
            # CodeDeploy gets round to the next hook when it does; whatever the step before moved stays moved.
            time.sleep(self.hook_latency_s)
        t = time.monotonic()
        self.log(hook, f"invoking {function}" + (f" ({self.hook_latency_s:g} s after the step before)"
                                                 if self.hook_latency_s > 0 else ""))
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
        if self.move_together:
            # The others move without this one.
            self.move_together.abort()
        self.deployment.status = "Failed"
        if traffic_moved:
            self.set_public("public-prod", 0)
        self.deployment_event("FAILURE", 0.3)
        if traffic_moved:
            time.sleep(ROLLBACK_REMOVAL_DELAY_S)
        self.deregister(self.tgs["pub-green"], green_ips)
        self.log("Rollback", f"ECS deregistered {len(green_ips)} replacement tasks from pub-green")
        time.sleep(self.world.drain_s(self.tgs["pub-green"]))
        self.stop_tasks("green")
        self.log("Rollback", "replacement task set removed")
        self.outcome = "rolled_back"

    def play(self):
        group = self.world.groups[("web", self.spec.get("group", "web-bg"))]
        self.service = group.service[1]
        self.deployment = codedeploy.Deployment(self.deployment_id, group)
        self.deployment.config_name = CONFIGS[self.config][3]
        self.world.deployments[self.deployment.id] = self.deployment
        d = self.deployment
        with d.cond:
            d.task_sets = [{"label": "Blue", "tg": short(self.tgs["pub-blue"]), "desired": self.tasks,
                            "running": self.tasks, "weight": 100.0}]
        self.log("BeforeInstall", f"deployment {d.id} of {d.application}/{d.group}, config {self.config}")
        self.deployment_event("START")

        green_ips = self.start_tasks("green", first=self.green_first)
        if self.spec.get("block_private_green"):
            for ip in green_ips:
                self.world.blocked.add((self.lbs["private"], ip))
            self.log("Install", "scenario: the private load balancer cannot reach the replacement tasks")
        with d.cond:
            d.task_sets.append({"label": "Green", "tg": short(self.tgs["pub-green"]), "desired": self.tasks,
                                "running": self.tasks, "weight": 0.0})
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
            if self.move_together:
                try:
                    self.move_together.wait(timeout=self.hook_timeout_s)
                except threading.BrokenBarrierError:
                    self.log("AllowTraffic", "moving alone: another deployment of the moves together failed")
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

        self.log("Termination", f"waiting {self.termination_wait_s:g} s before removing the original task set")
        time.sleep(self.termination_wait_s)
        blue_ips = [p.task_ip for p in self.task_procs["blue"]]
        self.deregister(self.tgs["pub-blue"], blue_ips)
        time.sleep(self.world.drain_s(self.tgs["pub-blue"]))
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
            time.sleep(self.world.drain_s(blue))
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
