"""`python -m bench.run --only transfer`: the upload and download paths against bare boto3.

Every number is a ratio against a baseline measured in the same run, on the same stream or
object, each side in a fresh process (wall time of the work alone, CPU of the whole process),
alternating which goes first, medians of `rounds`. CPU is the work's own (the process's CPU
after its imports and clients are ready), so Airflow's imports do not weigh on our side:

- upload: ``pg_basebackup -Ft -D - -X none`` of the platform cluster piped into
  (a) a bare boto3 ``upload_fileobj`` (default TransferConfig, no checksums, SSE-KMS with the
  region's key), (b) ``ObjectStore.upload_stream`` (our upload path: growing parts, SHA-256 of
  the whole stream and of every part), and (c) the continuous tier's base backup task
  (``take_snapshot``: the same upload, the tar's manifest read on the side, and the wait for the
  end WAL segment to reach the archive);
- download, of the base backup tar the last task wrote: (a) one bare boto3 GET read to the
  end, (b) a bare boto3 ``download_fileobj`` (parallel ranged GETs) into a sink, (c) our re-hash
  path (``ObjectStore.iter_chunks`` into SHA-256, what ``integrity.check_copy`` reads), and
  (d) the whole ``check_copy`` of that region's copy (its tar read and WAL checks included).

Each side runs as ``python -m bench.transfer STEP ARGS_JSON`` and prints one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.continuous import (
    BARE_KEY,
    SERVER,
    TIER,
    Context,
    _basebackup_argv,
    _cpu_seconds,
    _delete_base_backups,
    _hwm_mb,
    _prepare,
    _s3_client,
    archive_now,
    run_step,
)
from bench.results import Measured

REPO = Path(__file__).resolve().parent.parent
#: Where our upload path's copy of the stream goes (deleted afterwards).
STORE_KEY = "bench/transfer/store-upload.tar"
READ = 8 * 1024 * 1024


# ---- the child side: one measured side in a fresh process ------------------------------------


def _measured(work: Any) -> dict[str, Any]:
    cpu_ready, started = _cpu_seconds(), time.perf_counter()
    result = work()
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": _cpu_seconds(),
        "work_cpu_seconds": _cpu_seconds() - cpu_ready,
        "rss_mb": _hwm_mb(),
        "result": result,
    }


def _store() -> Any:
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import Stores

    return Stores.from_policy(load_policy()).primary


def _store_upload(args: dict[str, Any]) -> dict[str, Any]:
    """pg_basebackup's tar into ObjectStore.upload_stream, as the task streams it."""
    store = _store()

    def work() -> dict[str, Any]:
        process = subprocess.Popen(
            _basebackup_argv(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PGPASSWORD": args["password"]},
        )
        assert process.stdout is not None

        def finished() -> None:
            if process.wait() != 0:
                raise SystemExit(f"pg_basebackup exited {process.returncode}")

        uploaded = store.upload_stream(STORE_KEY, process.stdout, finished)
        return {"size": uploaded.size, "sha256": uploaded.sha256}

    return _measured(work)


def _bare_get(args: dict[str, Any]) -> dict[str, Any]:
    client = _s3_client(0)

    def work() -> dict[str, Any]:
        body = client.get_object(Bucket=args["bucket"], Key=args["key"])["Body"]
        size = sum(len(chunk) for chunk in iter(lambda: body.read(READ), b""))
        return {"size": size}

    return _measured(work)


class _Sink:
    """A writable that keeps nothing (download_fileobj wants seek and write)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def seek(self, *_: Any) -> int:
        return 0

    def tell(self) -> int:
        return 0


def _bare_download(args: dict[str, Any]) -> dict[str, Any]:
    client = _s3_client(0)

    def work() -> dict[str, Any]:
        sink = _Sink()
        client.download_fileobj(args["bucket"], args["key"], sink)
        return {"size": sink.size}

    return _measured(work)


def _rehash(args: dict[str, Any]) -> dict[str, Any]:
    store = _store()

    def work() -> dict[str, Any]:
        digest, size = hashlib.sha256(), 0
        for chunk in store.iter_chunks(args["key"]):
            digest.update(chunk)
            size += len(chunk)
        return {"size": size, "sha256": digest.hexdigest()}

    return _measured(work)


def _check_copy(args: dict[str, Any]) -> dict[str, Any]:
    from include.backup_dr.engines import engine_for
    from include.backup_dr.integrity import check_copy
    from include.backup_dr.stores import from_ref

    store = _store()
    manifest = store.manifest(from_ref(args["ref"]))
    assert manifest is not None

    def work() -> dict[str, Any]:
        report = check_copy(store, manifest, engine_for(manifest.engine))
        return {"ok": report.ok, "bytes_read": report.bytes_read, "summary": report.summary()}

    return _measured(work)


_STEPS = {
    "store_upload": _store_upload,
    "bare_get": _bare_get,
    "bare_download": _bare_download,
    "rehash": _rehash,
    "check_copy": _check_copy,
}


def _run(step: str, **args: Any) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.transfer", step, json.dumps(args, default=str)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench step {step} failed ({out.returncode}): {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the parent side -------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], field: str) -> float:
    return statistics.median(run[field] for run in runs)


def _ratio_rows(label: str, ours: list[dict], bare: list[dict], goal: str = "") -> list[Measured]:
    wall, bare_wall = _median(ours, "seconds"), _median(bare, "seconds")
    cpu, bare_cpu = _median(ours, "work_cpu_seconds"), _median(bare, "work_cpu_seconds")
    rounds = ", ".join(
        f"{o['seconds'] / b['seconds']:.2f}x" for o, b in zip(ours, bare, strict=True)
    )
    return [
        (
            f"{label}: wall, median of {len(ours)}",
            f"{wall:.1f} s vs {bare_wall:.1f} s",
            f"{wall / bare_wall:.2f}x{goal} (rounds: {rounds})",
        ),
        (
            f"{label}: CPU of the work (imports and clients excluded)",
            f"{cpu:.1f} s vs {bare_cpu:.1f} s",
            f"{cpu / bare_cpu:.2f}x CPU",
        ),
    ]


def bench_upload(ctx: Context, rounds: int, created: list[dict[str, Any]]) -> dict[str, Any]:
    from include.backup_dr.postgres import pg_tool

    access = {
        "pg_basebackup": pg_tool("pg_basebackup"),
        "host": ctx.pg.host,
        "port": ctx.pg.port,
        "user": ctx.pg.user,
        "password": ctx.pg.env.get("PGPASSWORD", ""),
    }
    base = datetime.now(UTC).replace(microsecond=0)
    bare, ours, task = [], [], []

    def the_task() -> None:
        window = base + timedelta(minutes=len(task))
        task.append(run_step("snapshot", window=window.isoformat()))
        created.append(task[-1]["result"])

    sides = (
        lambda: bare.append(run_step("bare_upload", **access)),
        lambda: ours.append(_run("store_upload", **access)),
        the_task,
    )
    for n in range(rounds):
        print(f"  upload round {n + 1}/{rounds} ...", flush=True)
        for side in sides[:: 1 if n % 2 == 0 else -1]:
            archive_now(ctx)  # each starts with an empty archive queue
            side()
    for key in (BARE_KEY, STORE_KEY):
        _s3_client(0).delete_object(Bucket=ctx.stores.primary.bucket, Key=key)
    return {"bare": bare, "ours": ours, "task": task}


def bench_download(ctx: Context, ref: dict[str, Any], rounds: int) -> dict[str, Any]:
    from include.backup_dr.stores import from_ref

    manifest = ctx.stores.primary.manifest(from_ref(ref))
    assert manifest is not None
    target = {"bucket": ctx.stores.primary.bucket, "key": manifest.artifact.key}
    runs: dict[str, list[dict[str, Any]]] = {step: [] for step in ("bare_get", "bare_download")}
    runs |= {"rehash": [], "check_copy": []}
    for n in range(rounds):
        print(f"  download round {n + 1}/{rounds} ...", flush=True)
        for step in list(runs)[:: 1 if n % 2 == 0 else -1]:
            runs[step].append(_run(step, **target, ref=ref))
    hashed = {run["result"]["sha256"] for run in runs["rehash"]}
    assert hashed == {manifest.artifact.sha256}, "the re-hash disagrees with the manifest"
    assert all(run["result"]["ok"] for run in runs["check_copy"])
    return {"size": manifest.artifact.size, **runs}


def bench_transfer(rounds: int = 3) -> list[Measured]:
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import Stores

    policy = load_policy()
    ctx = _prepare(policy, Stores.from_policy(policy))
    print("  transfer: waiting for the WAL archive to catch up ...", flush=True)
    archive_now(ctx)
    created: list[dict[str, Any]] = []
    try:
        upload = bench_upload(ctx, rounds, created)
        download = bench_download(ctx, created[-1], rounds)
    finally:
        _delete_base_backups(ctx.stores, created)
    raw = {"measured_at": datetime.now(UTC).isoformat(), "upload": upload, "download": download}
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"transfer-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(raw, indent=2, default=str) + "\n")
    return _rows(upload, download)


def _rows(upload: dict[str, Any], download: dict[str, Any]) -> list[Measured]:
    size = upload["ours"][-1]["result"]["size"]
    stream = f"pg_basebackup tar of {SERVER} ({size / 1e6:,.0f} MB)"
    rows = _ratio_rows(
        f"upload: ObjectStore.upload_stream vs bare boto3 upload_fileobj, {stream}",
        upload["ours"],
        upload["bare"],
    )
    rows += _ratio_rows(
        f"upload: {TIER} base backup task vs bare pg_basebackup | boto3 upload_fileobj",
        upload["task"],
        upload["bare"],
        " (goal <= 1.15x)",
    )
    size = download["size"]
    rates = {
        step: size / _median(runs, "seconds") / 1e6
        for step, runs in download.items()
        if step != "size"
    }
    for ours, label in (
        ("rehash", "re-hash path (iter_chunks + SHA-256)"),
        ("check_copy", "integrity check_copy"),
    ):
        for bare, bare_label in (
            ("bare_get", "one bare GET"),
            ("bare_download", "bare download_fileobj"),
        ):
            goal = " (goal >= 0.8x)" if (ours, bare) == ("rehash", "bare_get") else ""
            rows.append(
                (
                    f"download {size / 1e6:,.0f} MB: {label} vs {bare_label}, median of "
                    f"{len(download[ours])}",
                    f"{rates[ours]:,.0f} MB/s vs {rates[bare]:,.0f} MB/s",
                    f"{rates[ours] / rates[bare]:.2f}x{goal}",
                )
            )
    rows.append(
        (
            "download CPU of the work: re-hash path vs one bare GET",
            f"{_median(download['rehash'], 'work_cpu_seconds'):.1f} s vs "
            f"{_median(download['bare_get'], 'work_cpu_seconds'):.1f} s",
            f"{_median(download['rehash'], 'work_cpu_seconds') / _median(download['bare_get'], 'work_cpu_seconds'):.2f}x CPU",
        )
    )
    return rows


def _main() -> None:
    sys.path.insert(0, str(REPO))
    step, args = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    print(json.dumps(_STEPS[step](args), default=str))


if __name__ == "__main__":
    _main()
