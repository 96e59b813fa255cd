"""A storm of `503 SlowDown` from both S3 regions during a real DAG run: the system rides it out.

A proxy in front of each region's S3 server answers the first attempt of every request with
SlowDown (half of all requests throttled), and the snapshot's first CompleteMultipartUpload on
every attempt, so the SDK gives up on it (its default retry mode makes three attempts), the
task fails, and Airflow's own retry has to take over. The run must still succeed, with no alert (a retried task is not
an incident), nothing lost, no half-written upload left as a backup, and the window verified.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from include.backup_dr.catalogue import BackupId, build_catalogue
from tests.faults.harness import (
    DAG_ID,
    EARLIER,
    RETRY_DELAY_SECONDS,
    TARGET,
    WINDOW,
    alerts,
    committed,
    connection_through,
    content_lost,
    describe,
    lost,
    only_targets,
    open_alert_path,
    record,
    row_checksums,
    timed_run,
    window_state,
)
from tests.faults.s3_proxy import Fault, ProxiedRequest, S3FaultProxy

pytestmark = pytest.mark.integration
#: Attempts of every request answered SlowDown; botocore's standard mode makes three.
THROTTLED_ATTEMPTS = 1
SDK_ATTEMPTS = 3


class Storm:
    """The proxy rule: off until started; then every request's first attempts are throttled,
    and the first CompleteMultipartUpload on every attempt (the SDK gives up on it)."""

    def __init__(self) -> None:
        self.raging = False
        self._completes_refused = 0
        self._lock = threading.Lock()

    def __call__(self, request: ProxiedRequest) -> Fault | None:
        if not self.raging:
            return None
        with self._lock:
            if request.operation == "CompleteMultipartUpload" and (
                self._completes_refused < SDK_ATTEMPTS
            ):
                self._completes_refused += 1
                return Fault.SLOW_DOWN
        return Fault.SLOW_DOWN if request.attempt <= THROTTLED_ATTEMPTS else None


def test_slowdown_storm_is_ridden_out_without_an_alert(
    stores, policy_file, smtp_sink, monkeypatch
) -> None:
    policy_file(only_targets(TARGET))
    baseline = row_checksums(TARGET)  # the source's rows, before the storm
    open_alert_path(smtp_sink)
    storm = Storm()
    with (
        S3FaultProxy(stores.primary.endpoint_url, storm).running() as primary,
        S3FaultProxy(stores.secondary.endpoint_url, storm).running() as secondary,
    ):
        for store, proxy in ((stores.primary, primary), (stores.secondary, secondary)):
            conn_id = store.region.conn_id
            monkeypatch.setenv(
                f"AIRFLOW_CONN_{conn_id.upper()}", connection_through(conn_id, proxy.endpoint)
            )
        clean, clean_seconds = timed_run(DAG_ID, EARLIER)  # the baseline, through the proxies
        assert clean.state == "success"
        before = committed(stores, f"platform/{TARGET}/")
        assert len(before) == 2

        storm.raging = True
        run, storm_seconds = timed_run(
            DAG_ID, WINDOW, retry_delay=timedelta(seconds=RETRY_DELAY_SECONDS)
        )
        storm.raging = False

    assert run.state == "success"
    assert alerts(smtp_sink) == ""
    retried = [ti.task_id for ti in run.get_task_instances() if ti.try_number > 1]
    assert retried == ["platform_primary.snapshot"]  # Airflow's retry took over once
    for proxy in (primary, secondary):
        assert proxy.injected["SLOW_DOWN PUT"] > 0 and proxy.injected["SLOW_DOWN GET"] > 0
    assert primary.injected["SLOW_DOWN CompleteMultipartUpload"] > SDK_ATTEMPTS

    backup = BackupId("platform", TARGET, "daily", WINDOW)
    verified, debris = window_state(stores, backup)
    assert verified == sorted(store.region.name for store in stores)
    backups, _ = build_catalogue(store.listing(f"platform/{TARGET}/") for store in stores)
    assert sorted(b.id.window for b in backups) == [EARLIER, WINDOW]
    earlier = BackupId("platform", TARGET, "daily", EARLIER)
    missing = lost(stores, before) + content_lost(
        stores, baseline, [earlier, backup], stores.secondary.region.name
    )
    throttled = primary.injected + secondary.injected
    record(
        "503 SlowDown storm on both regions",
        injected_when=(
            f"whole run: the first {THROTTLED_ATTEMPTS} attempt(s) of every request, and every "
            "attempt of the snapshot's first CompleteMultipartUpload"
        ),
        lost=missing,
        alert="none (ridden out: SDK retries, then one Airflow task retry)",
        recovery_seconds=0.0,  # the window was committed and verified during the storm
        clean_run_seconds=clean_seconds,
        storm_run_seconds=round(storm_seconds, 1),
        storm_run_to_clean_run=round(storm_seconds / clean_seconds, 2),
        slow_downs=dict(sorted(throttled.items())),
        requests_let_through=sum((primary.forwarded + secondary.forwarded).values()),
        debris_after_heal=[describe(d) for d in debris],
    )
    assert missing == []
