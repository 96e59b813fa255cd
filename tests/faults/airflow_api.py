"""Airflow's REST API beside dag.test(): an api-server on the session's metadata DB, and on-call
approving a pending Human-in-the-loop action through it."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def api_server(env: dict[str, str], port: int, home: Path) -> Iterator[tuple[str, str]]:
    """Airflow's core REST API on the session's metadata DB (what dag.test() writes to), with
    one admin user, `oncall`; yields (base URL, bearer token)."""
    password = secrets.token_hex(8)
    passwords = home / "api-passwords.json"
    passwords.write_text(json.dumps({"oncall": password}))
    log = (home / "api-server.log").open("ab")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "airflow"),
            "api-server",
            "--apps",
            "core",
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        env={
            **env,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "oncall:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        token = None
        while token is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the api-server did not start; see {home / 'api-server.log'}")
            try:
                token = _call(
                    base, "POST", "/auth/token", {"username": "oncall", "password": password}
                )["access_token"]
            except OSError:
                time.sleep(1)
        yield base, token
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _call(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 (a local http URL)
        base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read() or b"null")


#: How long an approver waits after the task parks before answering (see Approver.run).
SETTLE_S = 10.0


class Approver(threading.Thread):
    """Waits for the dr_failover approval to be pending, then answers it through the REST
    API, as on-call would from Required Actions; keeps the response."""

    def __init__(
        self, base: str, token: str, dag_id: str, choice: str = "Approve", timeout: float = 300
    ) -> None:
        super().__init__(name="approver", daemon=True)
        self.base, self.token, self.dag_id, self.choice, self.timeout = (
            base,
            token,
            dag_id,
            choice,
            timeout,
        )
        self.pending: dict[str, Any] | None = None
        self.response: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                found = _call(
                    self.base,
                    "GET",
                    f"/api/v2/dags/{self.dag_id}/dagRuns/~/hitlDetails",
                    token=self.token,
                )
                # As a person would: answer once the task is parked waiting for the answer
                # (an answer racing the park is recorded but never resumes the task).
                waiting = [
                    d
                    for d in found.get("hitl_details", [])
                    if not d.get("response_received")
                    and d["task_instance"].get("state") == "awaiting_input"
                ]
                if waiting:
                    # A person reads first; an answer within a second of the park races the
                    # executor's report of the parked worker, and the scheduler fails the task.
                    time.sleep(SETTLE_S)
                    self.pending = waiting[0]
                    ti = self.pending["task_instance"]
                    self.response = _call(
                        self.base,
                        "PATCH",
                        f"/api/v2/dags/{self.dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                        f"{ti['task_id']}/{ti['map_index']}/hitlDetails",
                        {"chosen_options": [self.choice]},
                        token=self.token,
                    )
                    return
                time.sleep(0.5)
            raise TimeoutError("no pending approval appeared")
        except BaseException as exc:
            self.error = exc
