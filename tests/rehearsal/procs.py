"""Every process the rehearsal starts (moto, tasks, hook binaries) is registered here and killed, with its whole
process group, when the rehearsal ends: normally, on an exception, or on SIGINT/SIGTERM. With REHEARSAL_PID_LOG
set, each one's pid and program are appended to that file, so that a check can look at exactly what this run
started (and not at other programs' processes of the same name)."""

import atexit
import os
import signal
import socket
import subprocess
import threading

_lock = threading.Lock()
_live: list[subprocess.Popen] = []
_closed = False


class ShuttingDown(RuntimeError):
    """A process was asked for after kill_all: a late retry must not outlive the rehearsal."""


def spawn(args, **kwargs) -> subprocess.Popen:
    kwargs.setdefault("start_new_session", True)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    with _lock:
        if _closed:
            raise ShuttingDown(args[0])
        p = subprocess.Popen(args, **kwargs)
        _live.append(p)
        log = os.environ.get("REHEARSAL_PID_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{p.pid} {' '.join(args)}\n")
    return p


def kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    with _lock:
        if p in _live:
            _live.remove(p)


def kill_all() -> None:
    global _closed
    with _lock:
        _closed = True
        procs = list(_live)
    for p in procs:
        kill(p)


def _on_signal(signum, _frame):
    kill_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    atexit.register(kill_all)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


_lane = None  # the lock on this process's loopback lane, held until it ends


def claim_lane(wanted=None) -> int:
    """Claims a loopback lane (tasks on 127.L.x.x) for this process, so that rehearsals run side by side never
    share task addresses: an exclusive lock on L.lock in one directory for the whole machine (loopback addresses are
    the machine's, so two checkouts of the project must not each hand out lane 0), held until the process ends
    (the operating system lets go of it however the process ends). `wanted`: that lane, waiting until it is free;
    otherwise the lowest free one."""
    import fcntl
    import tempfile
    global _lane
    root = os.environ.get("BLUEGREEN_MIRROR_LANES") or os.path.join(tempfile.gettempdir(), "bluegreen-mirror-lanes")
    os.makedirs(root, mode=0o1777, exist_ok=True)
    for lane in [wanted] if wanted is not None else range(255):
        f = open(os.path.join(root, f"{lane}.lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wanted is not None else fcntl.LOCK_NB))
        except OSError:
            f.close()
            continue
        _lane = f
        return lane
    raise RuntimeError("every loopback lane (0..254) is held by another rehearsal on this machine")


def free_port(host: str = "127.0.0.1") -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port
