"""A local implementation of the Lambda Runtime API. Each invocation starts the function's release binary as a
fresh process (a cold start, as Lambda does after idle time), serves it exactly one event through
`/2018-06-01/runtime/invocation/next`, collects its response or error, enforces the function timeout by killing
the process, and records the cold start (process start → first `next`) and the invocation duration.

Invocations are asynchronous, as CodeDeploy's and EventBridge's are, and so is their retry: an attempt that ends
in an error, a timeout or a crash is run again, twice at most, with the same event and request id. Lambda waits
one and then two minutes; here the waits are played at the scale of the rehearsal's deregistration delay (300 s
on AWS, 1 s here), so a retry arrives as early, relative to a draining target, as it would on AWS. Each attempt
gets its own session token, so the emulated endpoint can tell one attempt's calls from another's.

Each function's reserved concurrency is enforced (`concurrency`, from the template): an attempt that finds as many
of its function's attempts running is throttled, and Lambda, which queued the asynchronous event, tries it again
later (backing off from 1 second, played at the same scale), however often it takes."""

import json
import os
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietServer(ThreadingHTTPServer):
    """A client that goes away mid-request (a killed function, a finished probe) is not an error here."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        pass

import procs


# Lambda caps the environment variables a function is configured with at 4 KB in aggregate ("Lambda quotas":
# "Environment variables: 4 KB, for all environment variables associated with the function, in aggregate"),
# measured on the variables as a JSON object; the runtime's own (AWS_*, PATH, LAMBDA_*) do not count.
ENV_LIMIT_BYTES = 4096


class EnvironmentTooLarge(ValueError):
    """What Lambda answers CreateFunction/UpdateFunctionConfiguration with when the environment is too large."""


def configured_env_bytes(env: dict) -> int:
    """The size Lambda measures: the variables the function's configuration sets, as a JSON object."""
    mine = {k: v for k, v in env.items() if not k.startswith(("AWS_", "LAMBDA_", "_")) and k not in ("PATH", "TZ")}
    return len(json.dumps(mine, separators=(",", ":")).encode())


def check_env(function: str, env: dict):
    size = configured_env_bytes(env)
    if size > ENV_LIMIT_BYTES:
        raise EnvironmentTooLarge(
            f"InvalidParameterValueException: Lambda was unable to configure your environment variables because the "
            f"environment variables you have provided exceeded the 4KB limit (function {function}: {size} bytes "
            f"measured)")


# Lambda's waits before the second and the third attempt of an asynchronous invocation (1 and 2 minutes on AWS),
# as the rehearsal plays them, and as AWS has them (for a rehearsal on real time: an outage of real seconds).
RETRY_DELAYS_S = (0.2, 0.4)
AWS_RETRY_DELAYS_S = (60.0, 120.0)
# A throttled asynchronous event is tried again after 1 s, backing off to 5 minutes (Lambda developer guide,
# "How Lambda handles errors and retries with asynchronous invocation"), played at the scale above.
THROTTLE_RETRY_S = (1 / 300, 300 / 300)


class Invocation:
    def __init__(self, function: str, event: dict, timeout_s: float, request_id=None, attempt=1):
        self.function = function
        self.event = event
        self.timeout_s = timeout_s
        self.request_id = request_id or str(uuid.uuid4())
        self.attempt = attempt
        self.token = f"{self.request_id}.{attempt}"  # AWS_SESSION_TOKEN of this attempt
        self.proc = None
        self.crashed = False  # SIGKILLed by the rehearsal's crash injection
        self.retry = None  # the next attempt, set before `done` when there is one
        self.started = None  # process start
        self.first_next = None  # runtime asked for its first event
        self.finished = None
        self.response = None  # parsed JSON response body
        self.error = None  # error body, or "timeout"/"exited"
        self.done = threading.Event()
        self.served = False

    @property
    def cold_start_ms(self):
        return None if self.first_next is None else (self.first_next - self.started) * 1000

    @property
    def duration_ms(self):
        if self.finished is None or self.first_next is None:
            return None
        return (self.finished - self.first_next) * 1000


def _handler_for(inv: Invocation):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body in one segment, sent at once: otherwise a keep-alive client's delayed ACK stalls every
        # response by ~40 ms, which would be the emulator's latency, not the function's.
        wbufsize = -1
        disable_nagle_algorithm = True

        def _reply(self, status, body=b"", headers=None):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            if self.path != "/2018-06-01/runtime/invocation/next":
                return self._reply(404)
            if inv.served:
                # The runtime asks for the next event once it has answered; Lambda would freeze it here.
                inv.done.wait()
                time.sleep(inv.timeout_s)
                return
            inv.served = True
            inv.first_next = time.monotonic()
            deadline_ms = int((time.time() + inv.timeout_s) * 1000)
            body = json.dumps(inv.event).encode()
            self._reply(
                200,
                body,
                {
                    "Content-Type": "application/json",
                    "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": f"arn:aws:lambda:eu-west-1:123456789012:function:{inv.function}",
                    "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}",
                },
            )

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path == f"/2018-06-01/runtime/invocation/{inv.request_id}/response":
                try:
                    inv.response = json.loads(raw or b"null")
                except ValueError:
                    inv.response = {"raw": raw.decode(errors="replace")}
            elif self.path.endswith("/error"):
                inv.error = raw.decode(errors="replace") or "error"
            else:
                return self._reply(404)
            inv.finished = time.monotonic()
            self._reply(202, b'{"status":"OK"}', {"Content-Type": "application/json"})
            inv.done.set()

        def log_message(self, *_args):
            pass

    return Handler


class LambdaHost:
    """Runs functions on demand. `env` is the environment every function gets (the deployment's
    configuration); `functions` maps a function name to its binary."""

    def __init__(self, functions: dict, env: dict, log_dir: str, timeouts: dict):
        # Refused as Lambda refuses to configure such a function: before anything runs.
        for f in functions:
            check_env(f, env)
        self.functions = functions
        self.env = env
        self.log_dir = log_dir
        self.timeouts = timeouts  # function -> timeout in seconds
        self.invocations: list[Invocation] = []
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()
        # function -> reserved concurrency (absent: the account's, which the rehearsal never reaches)
        self.concurrency = {}
        self.running = {}  # function -> attempts running now
        self.throttled = {}  # function -> attempts that had to wait for a slot
        self.retry_delays_s = RETRY_DELAYS_S

    def later(self, delay_s: float, fn):
        """Runs `fn` after `delay_s` (an event EventBridge delivers a little later), remembered so that `settle`
        waits for it."""
        timer = threading.Timer(delay_s, fn)
        timer.daemon = True
        with self._lock:
            self._timers.append(timer)
        timer.start()

    def settle(self, timeout_s: float, ignore=lambda inv: False) -> list:
        """Waits until every event still to be delivered is delivered and every invocation it started has ended,
        retries included (those `ignore` says are not waited for), for at most `timeout_s`. Returns the invocations
        still running then: a run that ends while the reconciler is still handling its last events would report
        what those events are about to change."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                timers = [t for t in self._timers if not t.finished.is_set()]
                busy = [i for i in self.invocations if not i.done.is_set() and not ignore(i)]
            if not timers and not busy:
                return []
            left = deadline - time.monotonic()
            if left <= 0:
                return busy
            for waiter in [t.finished for t in timers] + [i.done for i in busy]:
                waiter.wait(max(0.0, deadline - time.monotonic()))

    def invoke_async(self, function: str, event: dict, access_key: str) -> Invocation:
        """Starts an invocation in the background (CodeDeploy invokes hooks asynchronously). The returned first
        attempt links to its retries (`retry`); `attempts` lists them."""
        if function not in self.functions:
            raise KeyError(function)
        inv = Invocation(function, event, self.timeouts[function])
        with self._lock:
            self.invocations.append(inv)
        threading.Thread(target=self._run, args=(inv, access_key), daemon=True).start()
        return inv

    @staticmethod
    def attempts(inv: Invocation, timeout_s: float) -> list:
        """Waits for an invocation's last attempt to end and returns every attempt, first to last."""
        deadline = time.monotonic() + timeout_s
        out = [inv]
        while True:
            if not out[-1].done.wait(max(0.0, deadline - time.monotonic())):
                return out
            if out[-1].retry is None:
                return out
            out.append(out[-1].retry)

    def attempt(self, token: str):
        """The attempt whose session token is `token`, if any."""
        with self._lock:
            return next((i for i in self.invocations if i.token == token), None)

    def kill(self, token: str) -> bool:
        """SIGKILLs the attempt whose session token is `token`, as a crash would (no answer, no clean-up)."""
        inv = self.attempt(token)
        if inv is None or inv.proc is None:
            return False
        inv.crashed = True
        try:
            os.killpg(inv.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        inv.proc.wait()
        return True

    def _retry(self, inv: Invocation, access_key: str):
        """Lambda's retry of a failed asynchronous attempt: same event and request id, after a wait."""
        nxt = Invocation(inv.function, inv.event, inv.timeout_s, inv.request_id, inv.attempt + 1)
        with self._lock:
            self.invocations.append(nxt)
        inv.retry = nxt

        def later():
            time.sleep(self.retry_delays_s[inv.attempt - 1])
            try:
                self._run(nxt, access_key)
            except procs.ShuttingDown:
                nxt.error = "not run: the rehearsal ended"
                nxt.done.set()

        threading.Thread(target=later, daemon=True).start()

    def _run(self, inv: Invocation, access_key: str):
        server = QuietServer(("127.0.0.1", 0), _handler_for(inv))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        env = dict(self.env)
        env.update(
            {
                "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
                "AWS_LAMBDA_FUNCTION_NAME": inv.function,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{inv.function}",
                "AWS_LAMBDA_LOG_STREAM_NAME": inv.request_id,
                "AWS_ACCESS_KEY_ID": access_key,
                "AWS_SESSION_TOKEN": inv.token,
            }
        )
        self._slot(inv)
        try:
            self._attempt(inv, env)
        finally:
            with self._lock:
                self.running[inv.function] -= 1
        if inv.response is None and inv.attempt <= len(self.retry_delays_s):
            self._retry(inv, access_key)
        inv.done.set()
        server.shutdown()
        server.server_close()

    def _slot(self, inv: Invocation):
        """Waits for one of the function's reserved concurrency, as Lambda holds a throttled asynchronous event."""
        wait, counted = THROTTLE_RETRY_S[0], False
        while True:
            with self._lock:
                limit = self.concurrency.get(inv.function)
                if limit is None or self.running.get(inv.function, 0) < limit:
                    self.running[inv.function] = self.running.get(inv.function, 0) + 1
                    return
                if not counted:
                    self.throttled[inv.function] = self.throttled.get(inv.function, 0) + 1
                    counted = True
            time.sleep(wait)
            wait = min(wait * 2, THROTTLE_RETRY_S[1])

    def _attempt(self, inv: Invocation, env: dict):
        log_path = inv.log_path = os.path.join(self.log_dir, f"{inv.function}-{inv.request_id[:8]}-{inv.attempt}.log")
        with open(log_path, "wb") as log:
            inv.started = time.monotonic()
            p = procs.spawn([self.functions[inv.function]], env=env, stdout=log, stderr=log)
            inv.proc = p
            deadline = inv.started + inv.timeout_s
            while not inv.done.is_set():
                if p.poll() is not None:
                    inv.error = inv.error or f"process exited with status {p.returncode} before answering"
                    break
                if time.monotonic() > deadline:
                    inv.error = f"Task timed out after {inv.timeout_s:.0f} seconds"
                    break
                inv.done.wait(0.02)
            if inv.finished is None:
                inv.finished = time.monotonic()
            procs.kill(p)
