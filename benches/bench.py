"""Benchmarks: our hooks against the same AfterAllowTraffic hook written the usual way (Python + boto3, Node.js +
AWS SDK v3), on this machine, in one run, against the rehearsal's emulated AWS (moto behind the stand-in) and its
Lambda Runtime API. Prints one table (medians with min–max over the repeats), or with --json one object. Then
the account's ELB budget: deployments played on AWS's clock (real minutes), an idle fleet and fleets of
concurrent deployments, so the full run takes about an hour; --quick plays them compressed in a few minutes.

    python bench.py [--quick [--fleet-report FILE] [--sweep-figures FILE]] [--json]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "rehearsal"))

import procs  # noqa: E402
import rehearse  # noqa: E402
import codedeploy  # noqa: E402
import standin  # noqa: E402
from lambda_host import QuietServer  # noqa: E402

BINARIES = ["after-install", "before-allow-traffic", "after-allow-traffic", "reconciler"]
# The memory at which Lambda credits a function with one vCPU-second a second.
LAMBDA_MB_PER_VCPU = 1769


def bin_dir():
    """Where the hooks' binaries are: this machine's release build unless BLUEGREEN_MIRROR_BIN_DIR says otherwise."""
    return os.environ.get("BLUEGREEN_MIRROR_BIN_DIR", os.path.join(ROOT, "target", "release"))


def template_memory_mb():
    """The memory the SAM template gives every function (its Globals), read rather than restated."""
    with open(os.path.join(ROOT, "infra", "template.yaml")) as f:
        found = re.search(r"^\s+MemorySize:\s*(\d+)\s*$", f.read(), re.MULTILINE)
    if not found:
        raise RuntimeError("infra/template.yaml gives no MemorySize")
    return int(found.group(1))


LAMBDA_MB = template_memory_mb()


class WarmRun:
    """One function process serving several events in a row through its own Runtime API: the first is the cold
    invocation, the rest are warm. Records process start, each `next` and each response, and the peak RSS."""

    def __init__(self, cmd, env, events, timeout_s=60, before_each=None):
        self.cmd, self.env, self.events, self.timeout_s = cmd, env, list(events), timeout_s
        # Run before each event after the first (outside the timed window): puts back what the invocation before
        # changed, so that a warm invocation finds the world a real one would, not the one its predecessor left.
        self.before_each = before_each
        self.total = len(self.events)
        self.nexts, self.responses = [], []
        # The process's CPU time (ns, every thread) as each event is handed out and as each response arrives.
        self.pid, self.cpu_at_next, self.cpu_at_response = None, [], []
        self.done = threading.Event()
        self.error = None

    def _handler(self):
        run = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1
            disable_nagle_algorithm = True

            def log_message(self, *_a):
                pass

            def do_GET(self):  # noqa: N802
                if not run.events:
                    run.done.wait(run.timeout_s)
                    return
                if run.nexts and run.before_each:
                    run.before_each()
                event = run.events.pop(0)
                run.cpu_at_next.append(cpu_ns(run.pid))
                run.nexts.append(time.monotonic())
                body = json.dumps(event).encode()
                self.send_response(200)
                for k, v in {"Content-Type": "application/json", "Lambda-Runtime-Aws-Request-Id": str(uuid.uuid4()),
                             "Lambda-Runtime-Deadline-Ms": str(int((time.time() + run.timeout_s) * 1000)),
                             "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:eu-west-1:1:function:bench",
                             "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                run.responses.append(time.monotonic())
                run.cpu_at_response.append(cpu_ns(run.pid))
                if self.path.endswith("/error"):
                    run.error = raw.decode(errors="replace")
                if len(run.responses) == run.total:
                    run.done.set()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler

    def run(self, log):
        server = QuietServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = dict(self.env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}")
        started = time.monotonic()
        p = procs.spawn(self.cmd, env=env, stdout=log, stderr=log)
        self.pid = p.pid
        finished = self.done.wait(self.timeout_s)
        rss_kib = None
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        rss_kib = int(line.split()[1])
        except OSError:
            pass
        procs.kill(p)
        server.shutdown()
        server.server_close()
        if not finished or len(self.responses) < len(self.nexts) or not self.nexts:
            raise RuntimeError(f"{self.cmd[0]} answered {len(self.responses)} of {len(self.nexts) + len(self.events)} events "
                               f"(exit status {p.returncode}; see target/bench/bench.log)")
        invokes = [(r - n) * 1000 for n, r in zip(self.nexts, self.responses)]
        cpu = [(r - n) / 1e6 if None not in (n, r) else None for n, r in zip(self.cpu_at_next, self.cpu_at_response)]
        warm_cpu = [c for c in cpu[1:] if c is not None]
        return {"cold_start_ms": (self.nexts[0] - started) * 1000, "first_invoke_ms": invokes[0],
                "warm_invoke_ms": statistics.median(invokes[1:]) if len(invokes) > 1 else None,
                "first_cpu_ms": cpu[0], "warm_cpu_ms": statistics.median(warm_cpu) if warm_cpu else None,
                "peak_rss_mib": rss_kib / 1024 if rss_kib else None, "first_next": self.nexts[0],
                "nexts": list(self.nexts)}


def cpu_ns(pid):
    """The CPU time a process has run, every thread, in ns (/proc/<pid>/task/*/schedstat), or None."""
    if pid is None:
        return None
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that ended meanwhile
    except OSError:
        return None
    return total


def dist(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "n": len(values)}


class Bench:
    def __init__(self, quick, out):
        self.quick = quick
        self.out = out
        # Its tasks on a loopback lane no other rehearsal on this machine holds.
        self.r = rehearse.Rehearsal("happy", 3, None, out, lane=procs.claim_lane())
        self.r.run_dir = os.path.join(ROOT, "target", "bench")
        os.makedirs(self.r.run_dir, exist_ok=True)
        self.log = open(os.path.join(self.r.run_dir, "bench.log"), "wb")

    def say(self, text):
        print(text, file=self.out, flush=True)

    def setup(self):
        r = self.r
        r.start_moto()
        r.provision()
        r.start_standin()
        r.world.active_checks = False
        # These runs time the code, back to back, a dozen invocations a second: the account's ELB buckets (which
        # the budget section below and the rehearsals enforce) would time the emulated throttling instead.
        r.world.buckets.enabled = False
        group = r.world.groups[("web", "web-bg")]
        self.deployment = codedeploy.Deployment("d-BENCH0001", group)
        r.world.deployments[self.deployment.id] = self.deployment
        tg, ls = r.tgs, r.listeners
        # The public side after AllowTraffic, and the flip BeforeAllowTraffic planned, as our hooks record it.
        r.elb.modify_listener(ListenerArn=ls["public-prod"], DefaultActions=[{"Type": "forward", "ForwardConfig": {
            "TargetGroups": [{"TargetGroupArn": tg["pub-green"], "Weight": 100},
                             {"TargetGroupArn": tg["pub-blue"], "Weight": 0}]}}])
        # The groups as they stand at AfterAllowTraffic: the blue tasks in both blue groups, the green ones (mirrored
        # by BeforeAllowTraffic) in both green groups, all healthy, so that the invocation does the reads and checks
        # of a real one.
        for color, groups in (("blue", ("pub-blue", "prv-blue")), ("green", ("pub-green", "prv-green"))):
            ips = [r.task_ip(color, i) for i in (1, 2)]
            for key in groups:
                r.register(tg[key], ips, events=False)
                if not r.wait_healthy(tg[key], ips):
                    raise RuntimeError(f"bench setup: {key}'s targets did not turn healthy")
        route = lambda live, idle: {"target_groups": [{"target_group": live, "weight": 100},  # noqa: E731
                                                      {"target_group": idle, "weight": 0}]}
        self.record = {"deployment_id": self.deployment.id, "application": "web", "deployment_group": "web-bg",
                       "version": 1, "public_production_listener": ls["public-prod"],
                       "public_test_listener": ls["public-test"],
                       "planned_private_route": route(tg["prv-green"], tg["prv-blue"]),
                       "private_route_before": route(tg["prv-blue"], tg["prv-green"]),
                       "expires_at": int(time.time()) + 86400}
        # The binding's record before the flip, as BeforeAllowTraffic read it and carried it in the deployment's.
        self.binding_record = {"application": "web", "deployment_group": "web-bg", "version": 1,
                               "live_private_target_group": tg["prv-blue"], "last_deployment": None,
                               "updated_at_ms": int(time.time() * 1000)}
        self.record["binding_record"] = self.binding_record
        # Each service at an address of its own, as on AWS: a client's connections to one service are not reused
        # for another, so each pays for its own (see `World.rtt_s`).
        service_endpoints = {f"AWS_ENDPOINT_URL_{svc}": f"http://127.0.0.1:{standin.serve(r.world, health=False).server_address[1]}"
                             for svc in ("DYNAMODB", "ELASTIC_LOAD_BALANCING_V2", "CODEDEPLOY")}
        self.env = {
            "PATH": os.environ.get("PATH", ""), "AWS_REGION": rehearse.REGION, "AWS_DEFAULT_REGION": rehearse.REGION,
            "AWS_SECRET_ACCESS_KEY": "bench", "AWS_ENDPOINT_URL": r.endpoint, "AWS_EC2_METADATA_DISABLED": "true",
            "BLUEGREEN_MIRROR_TABLE": r.table, "BLUEGREEN_MIRROR_BINDINGS": json.dumps(r.bindings),
            "AWS_LAMBDA_FUNCTION_NAME": "after-allow-traffic", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(LAMBDA_MB),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_LAMBDA_LOG_LEVEL": "warn",
            # The account's whole Describe rate as the installation's budget: a process paces its reads at 1.5
            # times the budget, and back-to-back invocations of one process (a dozen a second here, one per
            # deployment on AWS) would otherwise time the pacing instead of the code.
            "BLUEGREEN_MIRROR_ELB_READS_PER_S": "40",
            **service_endpoints,
        }

    def reset_record(self, binding=None):
        """The table as BeforeAllowTraffic leaves it: the deployment's record with the planned flip, and the
        binding's record from before the flip, so that every invocation writes both as a real one does."""
        doc = dict(self.record)
        if binding is not None:
            doc["binding"] = binding
        rec = self.binding_record
        self.r.ddb.put_item(TableName=self.r.table, Item={
            "pk": {"S": f"binding#{rec['application']}#{rec['deployment_group']}"}, "kind": {"S": "binding"},
            "version": {"N": str(rec["version"])}, "doc": {"S": json.dumps(rec)}})
        self.r.ddb.put_item(TableName=self.r.table, Item={
            "pk": {"S": f"deployment#{self.deployment.id}"}, "kind": {"S": "deployment"},
            "version": {"N": "1"}, "doc": {"S": json.dumps(doc)}, "expires_at": {"N": str(doc["expires_at"])}})

    def timed(self, what, cmd, env, key, invocations, before_each=None):
        """One cold process given `invocations` AfterAllowTraffic events: its figures (WarmRun's), the calls it made
        (`calls`) and how many of them came before its first flip (`critical_path_calls`). A figure of an invocation
        that failed, or reported nothing, is not a figure of the hook's work: the bench stops there."""
        events = [{"DeploymentId": self.deployment.id,
                   "LifecycleEventHookExecutionId": self.deployment.new_execution("AfterAllowTraffic")}
                  for _ in range(invocations)]
        run = WarmRun(cmd, dict(env, AWS_ACCESS_KEY_ID=key), events, before_each=before_each).run(self.log)
        statuses = [self.deployment.executions[e["LifecycleEventHookExecutionId"]]["status"] for e in events]
        bad = sum(s != "Succeeded" for s in statuses)
        if bad:
            raise RuntimeError(f"{what}: {bad} of {len(statuses)} benchmark invocations did not report Succeeded "
                               "(see target/bench/bench.log)")
        run["calls"] = [c for c in self.r.world.calls if c[1] == key and c[0] >= run["first_next"]]
        flip = next((i for i, c in enumerate(run["calls"]) if c[3] == "ModifyListener"), None)
        run["critical_path_calls"] = None if flip is None else flip + 1
        return run

    def hooks(self, repeats, warm):
        impls = {
            "ours": [os.path.join(bin_dir(), "after-allow-traffic")],
            "python": [os.path.join(ROOT, ".venv", "bin", "python"), os.path.join(ROOT, "benches", "baselines", "python", "bootstrap.py")],
            "node": ["node", os.path.join(ROOT, "benches", "baselines", "node", "bootstrap.mjs")],
        }
        # One cold process of each implementation in turn, repeat after repeat: this machine's speed drifts over
        # minutes, and running every process of one implementation before the next would time the drift as well.
        runs = {name: [] for name in impls}
        for _ in range(repeats):
            for name, cmd in impls.items():
                self.reset_record()
                run = self.timed(name, cmd, self.env, f"AKIDBENCH{name.upper()}", 1 + warm,
                                 before_each=self.reset_record)
                # Event received → the private listener change reaching the (emulated) API.
                calls = run.pop("calls")
                flips = [next((c[0] for c in calls if c[0] >= t and c[3] == "ModifyListener"), None) for t in run["nexts"]]
                lat = [(f - t) * 1000 for f, t in zip(flips, run["nexts"]) if f is not None]
                run["flip_ms_cold"] = lat[0] if lat else None
                run["flip_ms_warm"] = statistics.median(lat[1:]) if len(lat) > 1 else None
                runs[name].append(run)
        results = {}
        for name in impls:
            results[name] = {k: dist([r[k] for r in runs[name]]) for k in
                             ("cold_start_ms", "first_invoke_ms", "warm_invoke_ms", "first_cpu_ms", "warm_cpu_ms",
                              "peak_rss_mib", "critical_path_calls", "flip_ms_cold", "flip_ms_warm")}
            self.say(f"  {name:<7} cold start {results[name]['cold_start_ms']['median']:>8} ms   "
                     f"peak RSS {results[name]['peak_rss_mib']['median']:>6} MiB")
        return results

    def stored(self, repeats):
        """AfterAllowTraffic on an installation whose bindings are stored in the table, with 1 and with 200 of
        them: its cold start and its AWS calls before the flip must not grow with the number of bindings."""
        r = self.r
        b = r.bindings["bindings"][0]
        env = {k: v for k, v in self.env.items() if k != "BLUEGREEN_MIRROR_BINDINGS"}

        def store(binding):
            doc = {"application": binding["application"], "deployment_group": binding["deployment_group"],
                   "version": 1, "binding": binding, "updated_at_ms": 0}
            r.ddb.put_item(TableName=r.table, Item={
                "pk": {"S": f"config#{binding['application']}#{binding['deployment_group']}"}, "kind": {"S": "config"},
                "version": {"N": "1"}, "doc": {"S": json.dumps(doc)}})

        out = {}
        stored = 0
        for n in (1, 200):
            while stored < n:
                store(b if stored == 0 else dict(b, deployment_group=f"svc{stored:03d}-bg"))
                stored += 1
            runs = []
            for _ in range(repeats):
                self.reset_record(binding=b)
                runs.append(self.timed(f"{n} stored bindings", [os.path.join(bin_dir(), "after-allow-traffic")], env,
                                       f"AKIDBENCHSTORED{n}", 1))
            out[str(n)] = {k: dist([x[k] for x in runs]) for k in ("cold_start_ms", "first_invoke_ms",
                                                                    "critical_path_calls")}
            self.say(f"  {n:>3} stored bindings: cold start {out[str(n)]['cold_start_ms']['median']} ms, "
                     f"{out[str(n)]['critical_path_calls']['max']} AWS calls before the flip")
        for k in range(stored):
            group = b["deployment_group"] if k == 0 else f"svc{k:03d}-bg"
            r.ddb.delete_item(TableName=r.table, Key={"pk": {"S": f"config#web#{group}"}})
        return out

    def binaries(self):
        """What Lambda loads: the arm64 zips scripts/package built, when present; else this machine's build, zipped
        here (its sizes are marked as such)."""
        out = {}
        for b in BINARIES:
            packaged = os.path.join(ROOT, "target", "lambda", b)
            if os.path.exists(os.path.join(packaged, "bootstrap.zip")):
                out[b] = {"arch": "arm64", "binary_bytes": os.path.getsize(os.path.join(packaged, "bootstrap")),
                          "zip_bytes": os.path.getsize(os.path.join(packaged, "bootstrap.zip"))}
                continue
            path = os.path.join(bin_dir(), b)
            zpath = os.path.join(self.r.run_dir, f"{b}.zip")
            with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
                z.write(path, "bootstrap")
            out[b] = {"arch": os.uname().machine, "binary_bytes": os.path.getsize(path),
                      "zip_bytes": os.path.getsize(zpath)}
        return out

    def mirror(self):
        """Mirroring N targets into an empty private group (and a 10% change of 1,000), done by the reconciler."""
        r, tg = self.r, self.r.tgs
        direct = r.client("elbv2", r.moto_url, "PROVISION")
        # The flip above left production on green; the pair mirrored here is blue.
        ips = lambda n, base=10: [f"10.{base + i // 250}.{i // 250}.{i % 250 + 1}" for i in range(n)]  # noqa: E731

        def setgroup(arn, wanted):
            have = [d["Target"]["Id"] for d in direct.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]]
            gone = [i for i in have if i not in set(wanted)]
            new = [i for i in wanted if i not in set(have)]
            for i in range(0, len(gone), 200):
                direct.deregister_targets(TargetGroupArn=arn, Targets=[{"Id": x, "Port": 18080} for x in gone[i:i + 200]])
            for i in range(0, len(new), 200):
                direct.register_targets(TargetGroupArn=arn, Targets=[{"Id": x, "Port": 18080} for x in new[i:i + 200]])
            r.world.refresh_members()

        def reconcile(label):
            key = f"AKIDBENCHMIRROR{label}"
            event = {"version": "0", "id": "bench", "detail-type": "Scheduled Event", "source": "aws.events",
                     "account": "1", "time": "2026-01-01T00:00:00Z", "region": rehearse.REGION, "resources": [], "detail": {}}
            env = dict(self.env, AWS_ACCESS_KEY_ID=key, AWS_LAMBDA_FUNCTION_NAME="reconciler")
            run = WarmRun([os.path.join(bin_dir(), "reconciler")], env, [event]).run(self.log)
            calls = [c for c in r.world.calls if c[1] == key]
            writes = sum(1 for c in calls if c[3] in ("RegisterTargets", "DeregisterTargets"))
            return {"mirror_calls": writes, "all_calls": len(calls), "mirror_ms": round(run["first_invoke_ms"], 1)}

        out = {}
        for n in (1, 10, 100, 1000):
            setgroup(tg["prv-blue"], [])
            setgroup(tg["pub-blue"], ips(n))
            out[str(n)] = reconcile(str(n))
            self.say(f"  mirror {n:>5} targets: {out[str(n)]['mirror_calls']} ELB writes, {out[str(n)]['mirror_ms']} ms")
        changed = ips(900) + ips(100, base=200)
        setgroup(tg["pub-blue"], changed)
        out["1000_10pct_change"] = reconcile("CHANGE")
        self.say(f"  10% change of 1,000: {out['1000_10pct_change']['mirror_calls']} ELB writes")
        setgroup(tg["pub-blue"], [])
        setgroup(tg["prv-blue"], [])
        return out

    def rehearsals(self, n, quick):
        """The flip skew (the public production route's reroute to the private one's) per deployment configuration
        and per modelled hook latency (CodeDeploy's delay before each hook), and the linear follower's weight lag."""
        def rehearse(*args):
            p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "rehearsal", "rehearse.py"), "--json",
                                *args], capture_output=True, timeout=900)
            return json.loads(p.stdout)

        configs = ("AllAtOnce",) if quick else ("AllAtOnce", "Canary10Percent", "Linear10Percent")
        out = {"flip_skew_ms": {}}
        for config in configs:
            out["flip_skew_ms"][config] = {}
            for latency in FLIP_LATENCIES_S[:2] if quick else FLIP_LATENCIES_S:
                values = [rehearse("--scenario", "happy", "--config", config, "--hook-latency", str(latency))
                          ["flip_skew_ms"] for _ in range(n)]
                out["flip_skew_ms"][config][str(latency)] = dist(values)
                self.say(f"  {config}, hooks {latency} s after the step before: flip skew "
                         f"{out['flip_skew_ms'][config][str(latency)]}")
        out["max_weight_lag_ms"] = dist([rehearse("--scenario", "linear")["max_weight_lag_ms"] for _ in range(n)])
        self.say(f"  linear: max_weight_lag_ms {out['max_weight_lag_ms']}")
        return out

    def budget(self, quick, fleet_report=None, sweep=None):
        """The account's ELB budget: the follower's reads over a canary and a linear deployment on AWS's clock
        (CodeDeploy's minute played as 60 s; 3 s in quick mode, which is not AWS's figure), an idle fleet's
        scheduled sweep over 10 emulated minutes, and fleets of 1, 5 and 20 concurrent deployments (in quick mode one
        small fleet, or `fleet_report`, a (file, report) of one just run). `sweep`: the 1,000-binding sweep's figures
        when they have been read already (see `sweep_figures`)."""
        def rehearse_json(*args):
            p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "rehearsal", "rehearse.py"), *args,
                                "--json"], capture_output=True, timeout=3600)
            self.log.write(p.stderr)
            try:
                return json.loads(p.stdout)
            except ValueError:
                raise RuntimeError(f"rehearse {' '.join(args)} printed no report (see target/bench/bench.log)") from None

        out = {"minute_s": 3.0 if quick else 60.0}
        for key, scenario in (("follower_canary", "canary"), ("follower_linear", "linear")):
            r = rehearse_json("--scenario", scenario, "--minute", f"{out['minute_s']:g}", "--reconciler-timeout", "900")
            attempts = r["elb"]["follower_attempts"]
            calls = sum(a["describe_calls"] for a in attempts)
            span = (max(a["first_call_s"] + a["seconds"] for a in attempts) - min(a["first_call_s"] for a in attempts)
                    if attempts else 0.0)
            out[key] = {"describe_per_s": round(calls / span, 3) if span else None, "describe_calls": calls,
                        "seconds": round(span, 1), "max_weight_lag_ms": r["max_weight_lag_ms"],
                        "passed": bool(r["passed"] and r["invariants_held"])}
            self.say(f"  {key}: {out[key]['describe_per_s']} Describe/s over {out[key]['seconds']} s, "
                     f"max lag {r['max_weight_lag_ms']} ms")
        services, minutes = (20, 2) if quick else (100, 10)
        r = rehearse_json("--scenario", "fleet", "--services", str(services), "--deployments", "0",
                          "--idle", str(minutes), "--neighbour", "0")
        out["idle"] = {"bindings": services, "emulated_minutes": minutes, "describe_per_s": r["describe_per_emulated_s"],
                       "bindings_checked": r["bindings_checked"], "throttled": r["throttled"], "passed": r["passed"]}
        self.say(f"  idle fleet of {services}: {r['describe_per_emulated_s']} Describe/s over {minutes} emulated "
                 f"minutes, {r['bindings_checked']} bindings checked")
        out["idle_1000"] = sweep or sweep_figures()
        self.say(f"  idle fleet of 1,000 (the engine on the test runtime's clock): {out['idle_1000']['describe_per_s']} "
                 f"Describe/s, every binding checked in {out['idle_1000']['rotation_minutes']} minutes")
        out["fleets"] = {}
        # Fleets on the rehearsal's dense clock (CodeDeploy's minute as 10 s, ten times an account's density), and
        # in full mode 5 and 20 at once on AWS's clock too. In quick mode a report of the same scenario that has
        # just been made (scripts/test's small fleet) stands for the run, which would only repeat it.
        if quick and fleet_report:
            reports = [fleet_report[1]]
            self.say(f"  (the fleet from {fleet_report[0]})")
        else:
            services, sizes = (4, ((2, 10),)) if quick else (20, ((1, 10), (5, 10), (20, 10), (5, 60), (20, 60)))
            reports = (rehearse_json("--scenario", "fleet", "--services", str(services), "--deployments", str(d),
                                     "--minute", str(minute), "--reconciler-timeout", "900" if minute == 60 else "60")
                       for d, minute in sizes)
        for r in reports:
            services, d, minute = r["services"], r["deployments"], round(r["minute_s"])
            total = r["elb"]["total"]
            out["fleets"][f"{d}@{minute}"] = {
                "bindings": services, "deployments": d, "minute_s": minute, "describe_per_s": total["describe_per_s"],
                "describe_peak_1s": total["describe_peak_1s"], "throttled": total["throttled"],
                "neighbour_throttles": r["neighbour_throttles"], "worst_lag_ms": r["max_weight_lag_ms"],
                "seconds": total["seconds"], "passed": r["passed"],
                "failed": [d_["binding"] for d_ in r["deployments_report"]
                           if d_["outcome"] != d_["expected_outcome"] or not d_["invariants_held"]]}
            self.say(f"  fleet {services} bindings, {d} at once, minute {minute} s: {total['describe_per_s']} Describe/s, peak "
                     f"{total['describe_peak_1s']}, neighbour throttled {r['neighbour_throttles']}, worst lag "
                     f"{r['max_weight_lag_ms']} ms, {'passed' if r['passed'] else 'FAILED'}")
        if not quick:
            # Eight canaries whose moves land in the same second, later than any follower can predict.
            r = rehearse_json("--scenario", "fleet", "--services", "8", "--deployments", "8", "--together",
                              "--neighbour", "10")
            total = r["elb"]["total"]
            out["together"] = {"deployments": 8, "worst_lag_ms": r["max_weight_lag_ms"],
                               "describe_per_s": total["describe_per_s"], "throttled": total["throttled"],
                               "throttled_writes": total.get("throttled_writes", 0),
                               "neighbour_throttles": r["neighbour_throttles"], "passed": r["passed"]}
            self.say(f"  eight canaries moving together: worst lag {r['max_weight_lag_ms']} ms, "
                     f"{'passed' if r['passed'] else 'FAILED'}")
        return out


# AWS's round trip as the benchmarks model it, in ms: DynamoDB documents single-digit milliseconds on average for
# GetItem and PutItem on its side alone ("Why are my DynamoDB requests slow?", AWS Knowledge Center), and ELB's and
# CodeDeploy's control-plane calls are not faster; 5 ms is the low end, 20 ms a more usual one.
AWS_RTT_MS = (5, 20)


def no_slower_than_python(times):
    return all(times[k]["ours"]["median"] <= times[k]["python"]["median"] for k in ("first_invoke_ms", "warm_invoke_ms"))


# CodeDeploy's delay before each hook, as modelled: none, a few seconds (what it commonly is), a slow day.
FLIP_LATENCIES_S = (0, 5, 30)

TARGETS = [
    ("cold start ≥ 15× shorter than Python", lambda j: j["ratios"]["cold_start"]["python"] >= 15),
    ("cold start ≥ 10× shorter than Node.js", lambda j: j["ratios"]["cold_start"]["node"] >= 10),
    ("peak memory ≤ 1/3 of either baseline", lambda j: min(j["ratios"]["memory"].values()) >= 3),
    ("AfterAllowTraffic critical path ≤ 2 AWS calls", lambda j: j["critical_path_calls"]["ours"]["max"] <= 2),
    ("AfterAllowTraffic with 200 stored bindings: ≤ 2 AWS calls before the flip, as with 1",
     lambda j: j["stored_bindings"]["200"]["critical_path_calls"]["max"] <= 2
     and j["stored_bindings"]["1"]["critical_path_calls"]["max"] <= 2),
    ("AfterAllowTraffic whole invocation ≤ Python's, first and warm, at moto's speed (concurrent calls answered in turn)",
     lambda j: no_slower_than_python(j)),
    *[(f"AfterAllowTraffic whole invocation ≤ Python's, first and warm, at a {rtt} ms AWS round trip",
       lambda j, rtt=rtt: no_slower_than_python(j["aws_rtt"][str(rtt)])) for rtt in AWS_RTT_MS],
    ("private flip within 300 ms of the public reroute (median), 600 ms at worst, at every modelled hook latency",
     lambda j: all(d is not None and d["median"] <= 300 and d["max"] <= 600
                   for by_latency in j["flip_skew_ms"].values() for d in by_latency.values())),
    ("mirroring 1,000 targets in ≤ 10 ELB calls", lambda j: j["mirror"]["1000"]["mirror_calls"] <= 10),
    ("each hook's zip ≤ 3 MB", lambda j: max(b["zip_bytes"] for b in j["binary_bytes"].values()) <= 3_000_000),
    ("follower ≤ 1 ELB Describe/s over a canary and a linear deployment, lag ≤ 1 s (on AWS's clock: not in quick mode)",
     lambda j: None if j["budget"]["minute_s"] != 60 else all(v["describe_per_s"] is not None and v["describe_per_s"] <= 1 and v["max_weight_lag_ms"] <= 1000
                   for k, v in j["budget"].items() if k.startswith("follower_"))),
    ("idle bindings ≤ 1 ELB Describe/s in all", lambda j: j["elb_describe_per_s"]["idle_100_bindings"] <= 1),
    ("1,000 idle bindings: each checked every 15 minutes at ≤ 5 ELB Describe/s in all",
     lambda j: j["budget"]["idle_1000"]["rotation_minutes"] <= 15 and j["budget"]["idle_1000"]["describe_per_s"] <= 5),
    ("eight canaries moving together: every step within 1 s, nothing of ours or the neighbours' throttled (full mode)",
     lambda j: None if "together" not in j["budget"] else j["budget"]["together"]["passed"]),
    ("fleet: neighbour never throttled, lag ≤ 1 s", lambda j: j["elb_describe_per_s"]["fleet"]["neighbour_throttles"] == 0
     and j["elb_describe_per_s"]["fleet"]["worst_lag_ms"] <= 1000),
]


SWEEP_LINE = "sweep figures: "


def sweep_figures(printed=None):
    """The scheduled sweep over 1,000 idle bindings: the engine's own code against the in-memory ELB, each run on
    the test runtime's clock (tests/tests/sweep.rs prints them; no fleet of that size fits on loopback). `printed`:
    what that test printed, when it has run already; otherwise it is run here."""
    if printed is None:
        # --workspace as scripts/test builds it: the same features, so nothing is compiled again.
        p = subprocess.run(["cargo", "test", "--locked", "-q", "--workspace", "--test", "sweep",
                            "sweep_of_a_thousand_idle_bindings", "--", "--nocapture"], cwd=ROOT, capture_output=True,
                           text=True, timeout=3600)
        if p.returncode:
            raise RuntimeError(f"the sweep's figures: cargo test exited {p.returncode}: {p.stdout[-400:]}{p.stderr[-400:]}")
        printed = p.stdout
    line = next((x for x in printed.splitlines() if x.startswith(SWEEP_LINE)), None)
    if line is None:
        raise RuntimeError(f"the sweep's figures: no line starting {SWEEP_LINE!r} in {printed[-400:]!r}")
    return json.loads(line[len(SWEEP_LINE):])


def table(j):
    lines = []
    impls = ("ours", "python", "node")
    m = lambda d: "-" if d is None else (f"{d['median']}" if d['min'] == d['max'] else f"{d['median']} ({d['min']}–{d['max']})")  # noqa: E731
    lines.append(f"{'AfterAllowTraffic':<22}" + "".join(f"{i:>26}" for i in impls))
    for k in ("cold_start_ms", "first_invoke_ms", "warm_invoke_ms", "first_cpu_ms", "warm_cpu_ms", "flip_ms_cold",
              "flip_ms_warm", "peak_rss_mib", "critical_path_calls"):
        lines.append(f"{k:<22}" + "".join(f"{m(j[k][i]):>26}" for i in impls))
    # Lambda credits a function with CPU in proportion to its memory, one vCPU-second a second at 1,769 MB: c ms of
    # CPU here take c × 1769 / m ms at the template's m MB when the credit is the limit (on cores as fast).
    for k, at in j["cpu_at_template_memory_rate_ms"].items():
        lines.append(f"{k + f'_cpu_ms@{LAMBDA_MB}MB':<22}" + "".join(f"{'-' if at[i] is None else at[i]:>26}" for i in impls))
    lines.append("")
    for rtt, times in j["aws_rtt"].items():
        for k in ("first_invoke_ms", "warm_invoke_ms"):
            lines.append(f"{k[:-3] + '_ms@rtt' + rtt:<22}" + "".join(f"{m(times[k][i]):>26}" for i in impls))
    lines.append("")
    lines.append("ratios baseline/ours     " + "   ".join(
        f"{k}: python {v['python']}×, node {v['node']}×" for k, v in j["ratios"].items()))
    lines.append("")
    lines.append(f"{'stored bindings':<22}{'cold start ms':>24}{'first invoke ms':>24}{'calls before flip':>20}")
    for n, v in j["stored_bindings"].items():
        lines.append(f"{n:<22}{m(v['cold_start_ms']):>24}{m(v['first_invoke_ms']):>24}{m(v['critical_path_calls']):>20}")
    lines.append("")
    lines.append(f"{'binary':<22}{'arch':>8}{'binary_bytes':>14}{'zip_bytes':>12}")
    for b, v in j["binary_bytes"].items():
        lines.append(f"{b:<22}{v.get('arch', '?'):>8}{v['binary_bytes']:>14}{v['zip_bytes']:>12}")
    lines.append("")
    lines.append(f"{'mirror (reconciler)':<22}{'ELB writes':>12}{'all calls':>12}{'ms':>10}")
    for n, v in j["mirror"].items():
        lines.append(f"{n:<22}{v['mirror_calls']:>12}{v['all_calls']:>12}{v['mirror_ms']:>10}")
    lines.append("")
    lines.append(f"{'flip_skew_ms':<22}" + "".join(f"{'hooks ' + s + ' s later':>26}" for s in next(iter(j["flip_skew_ms"].values()))))
    for config, by_latency in j["flip_skew_ms"].items():
        lines.append(f"  {config:<20}" + "".join(f"{m(d):>26}" for d in by_latency.values()))
    lines.append(f"{'max_weight_lag_ms':<22}{m(j['max_weight_lag_ms'])}")
    lines.append("")
    b = j["budget"]
    lines.append(f"ELB Describe calls a second (CodeDeploy's minute played as {b['minute_s']:g} s"
                 + ("" if b["minute_s"] == 60 else ": not AWS's clock") + ")")
    for k in ("follower_canary", "follower_linear"):
        lines.append(f"  {k:<20}{b[k]['describe_per_s']:>8}  over {b[k]['seconds']} s, max lag {b[k]['max_weight_lag_ms']} ms")
    i = b["idle"]
    lines.append(f"  {'idle ' + str(i['bindings']) + ' bindings':<20}{i['describe_per_s']:>8}  over "
                 f"{i['emulated_minutes']} emulated minutes, {i['bindings_checked']} bindings checked")
    k = b["idle_1000"]
    lines.append(f"  {'idle 1000 bindings':<20}{k['describe_per_s']:>8}  every binding in {k['rotation_minutes']} minutes, "
                 f"{k['per_run']} a run, {k['describe_per_check']} reads a check (the engine on a simulated clock)")
    lines.append(f"  {'fleet':<12}{'minute':>8}{'bindings':>9}{'at once':>9}{'ours/s':>8}{'peak':>6}{'throttled':>11}"
                 f"{'neighbour':>11}{'worst lag':>11}")
    for v in b["fleets"].values():
        lines.append(f"  {'':<12}{v['minute_s']:>7}s{v['bindings']:>9}{v['deployments']:>9}{v['describe_per_s']:>8}"
                     f"{v['describe_peak_1s']:>6}{v['throttled']:>11}{v['neighbour_throttles']:>11}"
                     f"{v['worst_lag_ms']:>9}ms" + ("" if v["passed"] else f"  FAILED {v['failed']}"))
    lines.append("")
    for name, ok in j["targets"].items():
        lines.append(f"{'-     ' if ok is None else 'met   ' if ok else 'MISSED'} {name}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a handful of iterations (what CI runs)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--fleet-report", metavar="FILE",
                    help="quick mode: the small fleet's figures from this `rehearse --scenario fleet --json` report "
                         "instead of a run of its own (scripts/test passes the one it has just made)")
    ap.add_argument("--sweep-figures", metavar="FILE",
                    help="quick mode: the 1,000-binding sweep's figures from what tests/tests/sweep.rs printed into "
                         "this file, instead of building and running it here (scripts/test runs it with the tests)")
    args = ap.parse_args()
    if args.fleet_report and not args.quick:
        ap.error("--fleet-report stands for quick mode's small fleet; the full run makes its own fleets")
    if args.sweep_figures and not args.quick:
        ap.error("--sweep-figures stands for quick mode's run of the test; the full run builds and runs it")
    sweep = None
    if args.sweep_figures:
        try:
            with open(args.sweep_figures) as f:
                sweep = sweep_figures(f.read())
        except (OSError, ValueError, RuntimeError) as e:
            ap.error(f"--sweep-figures {args.sweep_figures}: not what tests/tests/sweep.rs prints ({e})")
    fleet_report = None
    if args.fleet_report:
        # Read before anything runs: a wrong file is refused at once, not after minutes of rehearsals.
        try:
            with open(args.fleet_report) as f:
                report = json.load(f)
        except (OSError, ValueError) as e:
            ap.error(f"--fleet-report {args.fleet_report}: not a fleet rehearsal's report ({e})")
        if not isinstance(report, dict) or report.get("scenario") != "fleet":
            ap.error(f"--fleet-report {args.fleet_report}: not a fleet rehearsal's report (make one with "
                     "`scripts/rehearse --scenario fleet --json`)")
        fleet_report = (args.fleet_report, report)
    procs.install_cleanup()
    out = sys.stderr
    b = Bench(args.quick, out)
    repeats, warm, rehearsals = (2, 2, 1) if args.quick else (10, 5, 3)
    try:
        b.setup()
        b.say("hooks (cold start, invoke, memory, critical path):")
        hooks = b.hooks(repeats, warm)
        # The same invocations with AWS's round trip modelled: moto answers concurrent calls in turn, AWS does not.
        aws_rtt = {}
        for rtt in AWS_RTT_MS:
            b.say(f"hooks, each call answered no sooner than {rtt} ms after it was sent (a new connection: {3 * rtt} ms):")
            b.r.world.rtt_s = rtt / 1000
            timed = b.hooks(repeats, warm)
            aws_rtt[str(rtt)] = {k: {i: v[k] for i, v in timed.items()} for k in ("first_invoke_ms", "warm_invoke_ms")}
        b.r.world.rtt_s = 0.0
        b.say("stored bindings (AfterAllowTraffic):")
        stored = b.stored(repeats)
        b.say("binaries:")
        binaries = b.binaries()
        b.say("mirror:")
        mirror = b.mirror()
    finally:
        procs.kill_all()
    b.say("rehearsals:")
    rehearsal = b.rehearsals(rehearsals, args.quick)
    b.say("the account's ELB budget:")
    budget = b.budget(args.quick, fleet_report, sweep)
    j = {k: {i: hooks[i][k] for i in hooks} for k in
         ("cold_start_ms", "first_invoke_ms", "warm_invoke_ms", "first_cpu_ms", "warm_cpu_ms", "flip_ms_cold",
          "flip_ms_warm", "peak_rss_mib", "critical_path_calls")}
    j["stored_bindings"] = stored
    j["aws_rtt"] = aws_rtt
    j["binary_bytes"] = binaries
    j["mirror"] = mirror
    j["mirror_calls"] = {n: v["mirror_calls"] for n, v in mirror.items()}
    j["mirror_ms"] = {n: v["mirror_ms"] for n, v in mirror.items()}
    j.update(rehearsal)
    j["budget"] = budget
    fleet = next(iter(budget["fleets"].values())) if args.quick else budget["fleets"]["5@10"]
    j["elb_describe_per_s"] = {
        "follower_canary": budget["follower_canary"]["describe_per_s"],
        "follower_linear": budget["follower_linear"]["describe_per_s"],
        # In quick mode a smaller idle fleet, over 2 emulated minutes; the sweep's cost does not grow with size.
        "idle_100_bindings": budget["idle"]["describe_per_s"],
        "fleet": {k: fleet[k] for k in ("bindings", "deployments", "neighbour_throttles", "worst_lag_ms",
                                        "describe_peak_1s", "describe_per_s", "throttled")},
    }
    ratio = lambda k, base: round(j[k][base]["median"] / j[k]["ours"]["median"], 1)  # noqa: E731
    j["ratios"] = {"cold_start": {b_: ratio("cold_start_ms", b_) for b_ in ("python", "node")},
                   "warm_invoke": {b_: ratio("warm_invoke_ms", b_) for b_ in ("python", "node")},
                   "memory": {b_: ratio("peak_rss_mib", b_) for b_ in ("python", "node")}}
    # What the CPU time takes at the template's memory when Lambda's credit (m/1769 vCPU-s a second) is the limit.
    j["template_memory_mb"] = LAMBDA_MB
    j["cpu_at_template_memory_rate_ms"] = {k[:-7]: {i: None if j[k][i] is None else round(j[k][i]["median"] * LAMBDA_MB_PER_VCPU / LAMBDA_MB, 1)
                                           for i in hooks} for k in ("first_cpu_ms", "warm_cpu_ms")}
    # None: not measured in this mode.
    j["targets"] = {name: (lambda v: None if v is None else bool(v))(check(j)) for name, check in TARGETS}
    j["mode"] = "quick" if args.quick else "full"
    j["machine"] = {"cpus": os.cpu_count(), "arch": os.uname().machine}
    if args.json:
        print(json.dumps(j, indent=2))
    else:
        print(table(j))
    return 0


if __name__ == "__main__":
    sys.exit(main())
