"""The traffic probe: real HTTP requests, many a second, through each side's production route, routed the way an
ALB routes them: the listener's forward action (weights) → a target group → its healthy targets (all of them,
fail-open, when none is healthy; none at all means the route is dark) → the chosen task. An NLB listener's requests
follow its route as it stood `World.nlb_settle_s` ago (an NLB's data plane lags its configuration). A load balancer that
cannot reach a task (a blocked path) times out, as it would behind a security group that does not admit it."""

import random
import threading
import time
import urllib.error
import urllib.request


class Probe:
    def __init__(self, world, sides, period_s=0.01):
        self.world = world
        self.sides = sides  # name -> (listener ARN, load balancer ARN)
        self.period_s = period_s
        self.samples = {name: [] for name in sides}  # name -> [(t, ok, version)]
        self.stop = threading.Event()
        self.threads = []

    def start(self):
        for name in self.sides:
            t = threading.Thread(target=self._loop, args=(name,), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)

    def _once(self, name):
        listener, lb = self.sides[name]
        route = self.world.serving_route(listener)
        weighted = [(tg, w) for tg, w in route if w > 0] or route[:1]
        if not weighted:
            return False, "no-route"
        tg = random.choices([t for t, _ in weighted], weights=[max(w, 1) for _, w in weighted])[0]
        targets = self.world.routable(tg)
        if not targets:
            return False, "503-no-targets"
        ip, port = random.choice(targets)
        if (lb, ip) in self.world.blocked:
            time.sleep(0.05)
            return False, "504-unreachable"
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=0.5) as r:
                return True, r.read().decode().strip()
        except (OSError, urllib.error.URLError):
            return False, "502-connection-failed"

    def _loop(self, name):
        while not self.stop.is_set():
            t = time.monotonic()
            ok, what = self._once(name)
            self.samples[name].append((t, ok, what))
            self.stop.wait(self.period_s)

    def stats(self, name, other=None):
        s = self.samples[name]
        by_version = {}
        failed = 0
        dark_ms = 0.0
        only_dark_ms = 0.0  # dark while the other side was serving
        other_samples = self.samples.get(other, []) if other else []
        j = 0
        other_ok = True
        for i, (t, ok, what) in enumerate(s):
            while j < len(other_samples) and other_samples[j][0] <= t:
                other_ok = other_samples[j][1]
                j += 1
            if ok:
                by_version[what] = by_version.get(what, 0) + 1
                continue
            failed += 1
            gap = (s[i + 1][0] - t) if i + 1 < len(s) else self.period_s
            dark_ms += gap * 1000
            if other_ok:
                only_dark_ms += gap * 1000
        return {
            "requests": len(s),
            "failed_requests": failed,
            "served_by_version": by_version,
            "dark_ms": round(dark_ms, 1),
            "dark_while_other_side_served_ms": round(only_dark_ms, 1),
        }
