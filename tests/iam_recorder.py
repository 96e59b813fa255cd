"""Record every S3 and KMS call the code makes during the tests, then check them against the IAM
policies in deploy/iam/ (tests/iam_policy.py) once the whole session is over.

Two halves in one module:
- a botocore client plugin: `BOTOCORE_EXPERIMENTAL__PLUGINS=iam_recorder=tests.iam_recorder`
  makes botocore import this module and call `initialize_client_plugin` for every client it
  creates, in every process that inherits the variable (Airflow's task processes, the CLI run
  as a subprocess, the standalone scheduler), with no hook in production code. Each call is
  appended to `$BACKUP_IAM_CALLS` as one JSON line (O_APPEND: processes never interleave).
- a pytest plugin (tests/conftest.py `pytest_plugins`): the controller (or a run without
  xdist) sets the variables before any worker starts, gives each worker its own file
  (`.local/test/iam-calls/<worker>.jsonl`, under the controller's state directory), and at
  session end checks every worker's calls together, so the list
  of allowed actions nothing used covers the whole suite, not one worker's share of it. A
  denied call fails the run (exit status 1) and is printed; the report also goes to
  tests/artifacts/iam-report.txt.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Where a process appends its calls (set by the pytest plugin; unset: record nothing).
CALLS_ENV = "BACKUP_IAM_CALLS"
PLUGINS_ENV = "BOTOCORE_EXPERIMENTAL__PLUGINS"
PLUGIN = "iam_recorder=tests.iam_recorder"
#: The project's code: a call with none of it on its stack is the harness's own.
_CODE = (str(REPO / "include") + os.sep, str(REPO / "dags") + os.sep)
_CLI = str(REPO / "include" / "backup_dr" / "cli.py")
_TESTS = str(REPO / "tests") + os.sep
_UI = str(REPO / "include" / "backup_dr" / "ui") + os.sep
#: Functions that catch a refused write and go on (a warning, never data): see tests/iam_policy.
_BEST_EFFORT = {"_write_catalogue_cache"}
#: The CLI commands that only read (the read-only role's); `unlock` is not one of them.
_READ_ONLY_COMMANDS = {"_check", "_audit", "_policy_report"}
ARTIFACTS = REPO / "tests" / "artifacts"
#: Tests that run the local stack, where the project's code must have made calls.
_STACK_TESTS = ("tests/integration/", "tests/faults/")

# --- botocore side ---------------------------------------------------------------------------

_lock = threading.Lock()
_seen: set[str] = set()


def initialize_client_plugin(client: Any) -> None:
    """botocore's plugin entry point: record each API call of `client`."""
    if not os.environ.get(CALLS_ENV):
        return
    service = client.meta.service_model.service_name
    if service not in ("s3", "kms"):
        return

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        credentials = getattr(client._request_signer, "_credentials", None)
        call = {
            "service": service,
            "op": model.name,
            "region": client.meta.region_name,
            "principal": getattr(credentials, "access_key", None),
            **_call_facts(params),
            **_code_path(sys._getframe(1)),
        }
        try:
            _append(call)
        except OSError:
            # A process of another OS user (PostgreSQL's archive_command inherits the stack's
            # environment) cannot write the root-owned file: its calls are the harness's, and
            # the recorder must never fail the call it watches. Project code must be recorded.
            if call["code"] is not None:
                raise

    client.meta.events.register(f"provide-client-params.{service}", record)


def _call_facts(params: dict[str, Any]) -> dict[str, Any]:
    """What of the parameters decides the IAM action and resource (no body, no secrets)."""
    facts: dict[str, Any] = {"bucket": params.get("Bucket"), "key": _prefix(params.get("Key"))}
    objects = (params.get("Delete") or {}).get("Objects") or []
    if objects:
        facts["key"] = _prefix(objects[0].get("Key"))
        facts["version"] = any("VersionId" in o for o in objects)
        facts["unversioned"] = any("VersionId" not in o for o in objects)
    elif "VersionId" in params:
        facts["version"] = True
    if params.get("BypassGovernanceRetention"):
        facts["bypass"] = True
    if "ObjectLockMode" in params or "ObjectLockRetainUntilDate" in params:
        facts["lock"] = True
    source = params.get("CopySource")
    if isinstance(source, dict):
        source = f"{source.get('Bucket')}/{source.get('Key')}"
    if source:
        bucket, _, key = str(source).lstrip("/").split("?", 1)[0].partition("/")
        facts["copy_source"] = f"{bucket}/{_prefix(key)}"
    return facts


def _prefix(key: str | None) -> str | None:
    """A key's first two levels (`evidence/gc/*`): enough for a policy scoped by prefix, and
    a backup's thousand objects are one line."""
    if key is None:
        return None
    parts = key.split("/")
    return key if len(parts) <= 3 else "/".join([*parts[:2], "*"])


def _code_path(frame: Any) -> dict[str, Any]:
    """Where in the project's code the call comes from: "code", its innermost frame there;
    "outer", the outermost (where the project was entered: a DAG task, a CLI command, or a
    test calling a function directly); "entry": read-only when made under the CLI's read-only
    commands or the UI's app; "best_effort" when a function that survives a refusal made it."""
    code = outer = entry = best_effort = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if code is None and filename.startswith(_TESTS):
            # A test's own client (a user changing the source mid-copy, inside a project call)
            # made it: harness, whatever project code is further out.
            return {"code": None, "outer": None, "entry": None}
        if filename.startswith(_CODE):
            if frame.f_code.co_name in _BEST_EFFORT:
                best_effort = frame.f_code.co_name
            outer = f"{os.path.relpath(filename, REPO)}:{frame.f_code.co_name}"
            code = code or outer
            if filename.startswith(_UI) or (
                filename == _CLI and frame.f_code.co_name in _READ_ONLY_COMMANDS
            ):
                entry = "read-only"
        frame = frame.f_back
    found = {"code": code, "outer": outer, "entry": entry}
    return {**found, "best_effort": best_effort} if best_effort else found


def _append(call: dict[str, Any]) -> None:
    """One line per distinct call per process (a listing of 1,000 pages is one line)."""
    line = json.dumps(call, sort_keys=True)
    with _lock:
        if line in _seen:
            return
        _seen.add(line)
        descriptor = os.open(os.environ[CALLS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(descriptor, (line + "\n").encode())
        finally:
            os.close(descriptor)


# --- pytest side -----------------------------------------------------------------------------


def _calls_dir() -> Path:
    from tests.stack import STATE

    return STATE / "iam-calls"


def pytest_configure(config: Any) -> None:
    """Controller: set the plugin variable and an empty calls directory before workers start;
    each worker (or a run without xdist) then writes `<dir>/<worker>.jsonl`."""
    worker = getattr(config, "workerinput", None)
    if worker is None:
        folder = _calls_dir()
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.jsonl"):
            old.unlink()
        os.environ["BACKUP_IAM_CALLS_DIR"] = str(folder)
        plugins = [p for p in os.environ.get(PLUGINS_ENV, "").split(",") if p and p != PLUGIN]
        os.environ[PLUGINS_ENV] = ",".join([*plugins, PLUGIN])
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    folder = Path(os.environ.get("BACKUP_IAM_CALLS_DIR") or _calls_dir())  # from the controller
    os.environ[CALLS_ENV] = str(folder / f"{name}.jsonl")


#: Tests on the real stack that passed in this session (seen by the controller from every worker).
_stack_tests_passed: list[str] = []


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call" and report.passed and report.nodeid.startswith(_STACK_TESTS):
        _stack_tests_passed.append(report.nodeid)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """Controller only: check the whole session's calls; a denied call fails the run, and so
    does a session whose stack tests passed with nothing recorded (a broken recorder: botocore
    swallows a plugin's errors)."""
    if hasattr(session.config, "workerinput"):
        return
    from tests.iam_policy import check, local_site, read_calls

    verdict = check(read_calls(sorted(_calls_dir().glob("*.jsonl"))), local_site())
    if not _stack_tests_passed and not verdict.checked:
        return
    report = verdict.report()
    silent = bool(_stack_tests_passed) and not verdict.checked + verdict.harness
    if silent:
        report += f"\nstack tests passed and no call was recorded: is {PLUGIN} importable?"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "iam-report.txt").write_text(report + "\n")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "IAM policy check (deploy/iam)")
        reporter.write_line(report)
    if (verdict.denied or silent) and session.exitstatus == 0:
        session.exitstatus = 1
