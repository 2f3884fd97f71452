"""Shadow mode, rehearsed (the `observe` scenario): a canary deployment with the binding observing and a private load
balancer that cannot reach the replacement tasks, then the binding switched to enforce (the template's Mode, played
as the functions' new environment, as a stack update gives it them) and the next deployment played from the other
target group. What it judges, beside the rehearsal's invariants over the enforced deployment: the private side
untouched while observed (no ELB write by any function, registrations and routes as they were), every hook of the
observed deployment `Succeeded`, its record's would-be actions in the order they were found, and the next
deployment mirrored as usual. A mixin of `rehearse.Rehearsal`, as the player is."""

import json
import os
import subprocess
import time

from scenarios import REGION, ROOT, fmt_route, shares, short


class Shadow:
    # When the rehearsal's measures of the private weights begin (monotonic seconds): the enforced deployment's
    # start in the `observe` scenario, whose observed one leaves the private side where it was by design.
    judged_from = 0.0

    def private_snapshot(self):
        """The private side as ELB has it: each private group's registrations and each private route."""
        return {"members": {short(self.tgs[k]): self.members(self.tgs[k]) for k in ("prv-blue", "prv-green")},
                "routes": {k: fmt_route(self.world.route(self.listeners[k])) for k in ("private-prod", "private-test")}}

    def our_elb_writes(self):
        """ELB calls other than reads by any of the functions (hooks, reconciler, follower): registrations, route
        changes, and anything else that would change a load balancer, its target groups or their tags."""
        return sum(1 for _, who, service, op in self.world.calls
                   if who.startswith("AKID") and who != "AKIDOPERATOR" and service == "elbv2"
                   and not op.startswith("Describe"))

    def deployment_record(self, deployment_id):
        item = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": f"deployment#{deployment_id}"}},
                                 ConsistentRead=True)
        return json.loads(item["Item"]["doc"]["S"]) if "Item" in item else {}

    def set_mode(self, mode):
        """The binding's mode, as the functions' environment gives it from their next cold start on."""
        for b in self.bindings["bindings"]:
            b["mode"] = mode
        self.host.env["BLUEGREEN_MIRROR_BINDINGS"] = json.dumps(self.bindings)
        self.log("operator", f"binding web/web-bg set to {mode} (the stack's Mode parameter)")

    def play_observed(self):
        self.set_mode("observe")
        before, writes = self.private_snapshot(), self.our_elb_writes()
        first_id = self.deployment_id
        self.play()
        # The observed deployment's events (its end, the tasks it stopped) are handled before the switch.
        self.settle()
        observed_outcome, observed_hooks = self.outcome, {h: v["verdict"] for h, v in self.hook_reports.items()}
        after, written = self.private_snapshot(), self.our_elb_writes() - writes
        rec = self.deployment_record(first_id)
        self.log("observe", f"{first_id}: {observed_outcome}; {written} ELB writes; private side "
                            f"{'untouched' if after == before else 'CHANGED'}; "
                            f"{len(rec.get('would_be', []))} would-be actions on record")
        for w in rec.get("would_be", []):
            self.log("observe", f"  would have ({w.get('by')}): {w.get('action')}")
        problems = self.would_be_problems(rec) + self.report_problems(first_id)
        self.messages.extend(problems)
        self.shadow_checks = {
            "observed_private_side_untouched": written == 0 and after == before,
            "observed_deployment_succeeded": observed_outcome == "succeeded"
            and set(observed_hooks.values()) == {"Succeeded"},
            "would_be_actions_on_record_in_order": not problems,
        }
        if after != before:
            self.messages.append(f"the observed private side changed: {before} -> {after}")

        # The security group is fixed and the binding enforced; the next deployment starts from the other group.
        self.world.blocked.clear()
        self.spec["block_private_green"] = False
        self.set_mode("enforce")
        for side in ("pub", "prv"):
            self.tgs[f"{side}-blue"], self.tgs[f"{side}-green"] = self.tgs[f"{side}-green"], self.tgs[f"{side}-blue"]
        self.task_procs["blue"], self.task_procs["green"] = self.task_procs["green"], []
        self.green_first = self.tasks + 1
        self.deployment_id = "d-REHEARSAL2"
        switched = time.monotonic()
        self.play()
        # The private weights are measured from the enforced deployment's first write of the private production
        # route on (its AfterInstall puts it back on blue's mirror): before it, they are where observing left them.
        prod = self.listeners["private-prod"]
        self.judged_from = next((t for t, a, _ in self.world.route_events if a == prod and t >= switched), switched)
        rec = self.deployment_record(self.deployment_id)
        self.shadow_checks["next_deployment_enforced"] = self.outcome == "succeeded" and not rec.get("observed") \
            and shares(self.world.route(self.listeners["private-prod"])).get(self.tgs["prv-green"]) == 1.0

    def report_problems(self, deployment_id):
        """`bluegreen-mirror report ID`, as an operator runs it under the read policy: the page must draw the private
        production route as it would have moved beside the public one the follower read."""
        bin_dir = os.environ.get("BLUEGREEN_MIRROR_BIN_DIR", os.path.join(ROOT, "target", "release"))
        self.grant_operator("AKIDOPERATOR", change=False)
        env = {"PATH": os.environ.get("PATH", ""), "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "AKIDOPERATOR",
               "AWS_SECRET_ACCESS_KEY": "operator", "AWS_ENDPOINT_URL": self.endpoint,
               "AWS_EC2_METADATA_DISABLED": "true", "BLUEGREEN_MIRROR_TABLE": self.table,
               "BLUEGREEN_MIRROR_BINDINGS": json.dumps(self.bindings)}
        p = subprocess.run([os.path.join(bin_dir, "bluegreen-mirror"), "report", deployment_id], env=env,
                           capture_output=True, timeout=60)
        page = p.stdout.decode(errors="replace")
        with open(os.path.join(self.run_dir, f"report-{deployment_id}.html"), "w") as f:
            f.write(page)
        wanted = ('data-side="private (would be)" data-version="green"', 'data-side="public" data-version="green"',
                  'data-kind="would-be"')
        missing = [w for w in wanted if w not in page]
        if p.returncode != 0 or missing:
            return [f"bluegreen-mirror report {deployment_id} (exit {p.returncode}) does not draw {missing}: "
                    f"{p.stderr.decode(errors='replace')[-500:]}"]
        return []

    def would_be_problems(self, rec):
        """What is wrong with an observed deployment's record: it must say it was observed, hold the would-be
        registration of the replacement tasks into green's private group before the production route's moves,
        those moves ending at green, in the order found, and no would-be failure."""
        out = []
        acts = rec.get("would_be", [])
        green = short(self.tgs["prv-green"])
        if not rec.get("observed"):
            out.append("the observed deployment's record does not say it was observed")
        if rec.get("would_be_failure"):
            out.append(f"the observed deployment would have failed: {rec['would_be_failure']}")
        register = next((i for i, w in enumerate(acts) if w["action"].startswith("register ")
                         and w["action"].endswith(f" into {green}")), None)
        moves = [(i, w) for i, w in enumerate(acts) if w.get("route") == "production"]
        if register is None:
            out.append(f"no would-be registration into {green}: {acts}")
        if not moves:
            out.append(f"no would-be move of the private production route: {acts}")
        else:
            weights = [shares([(g["target_group"], g["weight"]) for g in w["to"]["target_groups"]])
                       .get(self.tgs["prv-green"], 0.0) for _, w in moves]
            if weights != sorted(weights) or weights[-1] == 0 or (register is not None and moves[0][0] < register):
                out.append(f"the would-be moves are out of order: {[w['action'] for _, w in moves]}")
            if self.config != "AllAtOnce" and len(moves) < 2:
                out.append(f"a {self.config} deployment's steps were not each found: {[w['action'] for _, w in moves]}")
        if len(rec.get("public_moves", [])) < 2:
            out.append(f"the follower's reads of the public moves are not on record: {rec.get('public_moves')}")
        if [w["at_ms"] for w in acts] != sorted(w["at_ms"] for w in acts):
            out.append("the would-be actions are not in the order they were found")
        return out
