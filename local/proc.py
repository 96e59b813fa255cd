"""Background processes tracked by PID files, with readiness waits that explain failures.

A PID file holds ``<pid> <start time>``: the start time (from /proc) guards against a
recycled PID, so a stale file never makes us skip a start or signal a stranger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from local.config import HOST, LOG_DIR, PID_DIR


class StackError(RuntimeError):
    """A part of the stack could not be started or stopped; the message says why."""


def pid_file(name: str) -> Path:
    return PID_DIR / f"{name}.pid"


def log_file(name: str) -> Path:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return LOG_DIR / f"{name}.log"


def _start_time(pid: int) -> str | None:
    """Start time of a live, non-zombie process in clock ticks, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return None if fields[0] in "ZX" else fields[19]


def write_pid(name: str, pid: int) -> None:
    started = _start_time(pid)
    if started is None:
        raise StackError(f"{name}: process {pid} exited right after start")
    PID_DIR.mkdir(parents=True, exist_ok=True)
    pid_file(name).write_text(f"{pid} {started}\n")


def running_pid(name: str) -> int | None:
    """PID of the part if its PID file names a live process; a stale file is removed."""
    path = pid_file(name)
    try:
        pid_text, started = path.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None
    if _start_time(pid) != started:
        path.unlink(missing_ok=True)
        return None
    return pid


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a detached process (own session, so it outlives us) logging to logs/<name>.log."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with log_file(name).open("ab") as log:
        log.write(
            f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode()
        )
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    write_pid(name, proc.pid)
    return proc


def alive(pid: int) -> bool:
    """True while the process runs; reaps it first if it is our own exited child."""
    with contextlib.suppress(ChildProcessError):  # not our child: init reaps it
        os.waitpid(pid, os.WNOHANG)
    return _start_time(pid) is not None


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when the group has no members left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def stop(name: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> bool:
    """Stop a spawned part: ``sig`` first, then SIGTERM and SIGKILL to its whole process group.

    Returns False when nothing was running. The group sweep catches children (e.g. the
    scheduler of airflow standalone) that a dying parent would otherwise orphan.
    """
    pid = running_pid(name)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):  # it may have just exited on its own
        os.kill(pid, sig)
    if not _wait_gone(lambda: alive(pid), timeout):
        _signal_group(pid, signal.SIGTERM)
        if not _wait_gone(lambda: alive(pid), 10):
            _signal_group(pid, signal.SIGKILL)
    # The process group id is the leader's pid because spawn() starts a new session.
    if not _wait_gone(lambda: _signal_group(pid, 0), 10):
        _signal_group(pid, signal.SIGKILL)
        _wait_gone(lambda: _signal_group(pid, 0), 5)
    pid_file(name).unlink(missing_ok=True)
    return True


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(
    name: str,
    probe: Callable[[], None],
    timeout: float,
    log: Path,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll ``probe`` (which raises until the part answers) or fail with the log tail."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(
                f"{name} exited with code {proc.returncode} during start-up.\n"
                f"--- last lines of {log} ---\n{log_tail(log)}"
            )
        try:
            probe()
            return
        except Exception as exc:  # any failure just means "not ready yet"
            last_error = exc
        time.sleep(0.5)
    raise StackError(
        f"{name} did not become ready within {timeout:.0f}s (last probe error: {last_error}).\n"
        f"--- last lines of {log} ---\n{log_tail(log)}"
    )
