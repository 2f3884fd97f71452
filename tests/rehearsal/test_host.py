"""The rehearsal's Lambda host refuses what Lambda refuses: a function whose configured environment exceeds 4 KB
(Lambda's quota, measured on the variables as a JSON object; the runtime's own variables do not count). A
realistic binding (listener rules, four target groups, a test route) is about 1 KB, so the environment form holds
three or four; the fleet stores its bindings in the table instead. And it enforces a function's reserved
concurrency, as Lambda does, holding an asynchronous event that finds it busy until a slot frees.

    python test_host.py
"""

import json
import os
import sys
import tempfile

from lambda_host import ENV_LIMIT_BYTES, EnvironmentTooLarge, LambdaHost, configured_env_bytes

ACCOUNT = "arn:aws:elasticloadbalancing:eu-west-1:123456789012"


def binding(k):
    tg = lambda side, color: f"{ACCOUNT}:targetgroup/{side}-{color}-svc{k:02d}/0123456789abcdef"  # noqa: E731
    rule = lambda port: f"{ACCOUNT}:listener-rule/app/private/50dc6c495c0c9188/f2f7dc8efc522ab2/{port}{k:04d}"  # noqa: E731
    return {"application": "platform", "deployment_group": f"svc{k:02d}-bg",
            "pairs": [{"public_target_group": tg("pub", "blue"), "private_target_group": tg("prv", "blue")},
                      {"public_target_group": tg("pub", "green"), "private_target_group": tg("prv", "green")}],
            "private_production_route": {"rule": rule(80)}, "private_test_route": {"rule": rule(8080)},
            "health_timeout_seconds": 300}


def env(n):
    return {"PATH": "/usr/bin", "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
            "AWS_SECRET_ACCESS_KEY": "x" * 2000, "BLUEGREEN_MIRROR_TABLE": "bluegreen-mirror",
            "BLUEGREEN_MIRROR_FOLLOWER": "bluegreen-mirror-reconciler",
            "BLUEGREEN_MIRROR_BINDINGS": json.dumps({"bindings": [binding(k) for k in range(1, n + 1)]})}


# A function that takes its event, works for 0.3 s, and answers (the Runtime API as the real binaries use it).
SLOW_FUNCTION = """#!/usr/bin/env python3
import os, time, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
with urllib.request.urlopen(api + "next") as r:
    request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
time.sleep(0.3)
urllib.request.urlopen(urllib.request.Request(api + request_id + "/response", data=b"{}", method="POST")).read()
"""


def check_concurrency(expect):
    """A function's reserved concurrency: three events for a function reserved one at a time run one after
    another, the two that found it busy counted as throttled, none lost."""
    with tempfile.TemporaryDirectory() as tmp:
        fn = os.path.join(tmp, "slow")
        with open(fn, "w") as f:
            f.write(SLOW_FUNCTION)
        os.chmod(fn, 0o755)
        host = LambdaHost({"slow": fn}, {"PATH": os.environ.get("PATH", "")}, tmp, {"slow": 10})
        host.concurrency["slow"] = 1
        invs = [host.invoke_async("slow", {"n": n}, "AKIDSLOW") for n in range(3)]
        host.settle(30)
        spans = sorted((i.started, i.finished) for i in invs if i.started and i.finished)
        expect("every event is answered, once", all(i.response == {} for i in invs) and len(host.invocations) == 3,
               [(i.response, i.error) for i in invs])
        expect("one at a time: none starts before the one before it ended",
               len(spans) == 3 and all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans)
        expect("the two that found it busy were throttled", host.throttled.get("slow") == 2, host.throttled)


def main():
    results = []

    def expect(name, cond, detail=""):
        results.append(cond)
        print(f"{'ok  ' if cond else 'FAIL'} {name}" + (f": {detail}" if detail and not cond else ""))

    one = len(json.dumps(binding(1)))
    expect("a realistic binding is about 1 KB", 800 <= one <= 1100, one)
    fits = max(n for n in range(1, 20) if configured_env_bytes(env(n)) <= ENV_LIMIT_BYTES)
    expect("the environment form holds three or four such bindings", fits in (3, 4), fits)
    expect("the runtime's own variables do not count", configured_env_bytes(env(1)) < 1400,
           configured_env_bytes(env(1)))
    try:
        LambdaHost({"reconciler": "/bin/false"}, env(fits), tempfile.gettempdir(), {"reconciler": 1})
        expect(f"{fits} bindings are accepted", True)
    except EnvironmentTooLarge as e:
        expect(f"{fits} bindings are accepted", False, e)
    try:
        LambdaHost({"reconciler": "/bin/false"}, env(fits + 1), tempfile.gettempdir(), {"reconciler": 1})
        expect(f"{fits + 1} bindings are refused", False, "accepted")
    except EnvironmentTooLarge as e:
        expect(f"{fits + 1} bindings are refused, as Lambda refuses them", "exceeded the 4KB limit" in str(e), e)
    check_concurrency(expect)
    failed = results.count(False)
    print(f"lambda host: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
