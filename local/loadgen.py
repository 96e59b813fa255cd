"""A small, steady write load on the platform server, so replication lag is measured under load.

    python -m local.loadgen --seconds 60 --rate 200

Each write is one committed transaction (an insert into ``public.loadgen_orders`` of
``platform_core``), paced on a fixed grid so the rate holds whatever the commit latency.
With ``record=True`` it keeps every acknowledged commit (its id and when the commit returned,
plus how long it took), so a failover test can name exactly which acknowledged commits a new
primary lacks.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field

import psycopg

from local import pg

DATABASE = "platform_core"
TABLE = "public.loadgen_orders"


@dataclass(frozen=True)
class Ack:
    """One commit the server acknowledged: its row id, when it returned, how long it took."""

    id: int
    at: float  # time.time() when COMMIT returned
    latency: float  # seconds from sending the INSERT to its acknowledgement


@dataclass
class LoadGenerator:
    """Runs in a thread while used as a context manager; counts what it committed.

    ``conninfo`` points it at another server than the platform one; with ``expect_loss`` a
    server that goes away ends the load quietly (a kill -9 is the point of the test)."""

    rate: float = 100.0  # transactions per second
    database: str = DATABASE
    conninfo: str | None = None
    record: bool = False
    expect_loss: bool = False
    committed: int = 0
    seconds: float = 0.0
    acks: list[Ack] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def _connect(self) -> psycopg.Connection:
        if self.conninfo is None:
            return pg.connect(self.database)
        return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)

    def __enter__(self) -> LoadGenerator:
        with self._connect() as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, "
                "placed_at timestamptz NOT NULL DEFAULT clock_timestamp(), amount numeric(12, 2))"
            )
        self._thread = threading.Thread(target=self._run, name="loadgen", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        try:
            with self._connect() as conn:
                tick = 0
                while not self._stop.is_set():
                    sent = time.monotonic()
                    row = conn.execute(
                        f"INSERT INTO {TABLE} (amount) VALUES (%s) RETURNING id", (tick % 1000,)
                    ).fetchone()
                    if self.record and row is not None:
                        self.acks.append(Ack(row[0], time.time(), time.monotonic() - sent))
                    self.committed += 1
                    tick += 1
                    delay = started + tick / self.rate - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
        except BaseException as exc:  # reported by __exit__
            self._error = exc
        finally:
            self.seconds = time.monotonic() - started

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._error is not None and not (
            self.expect_loss and isinstance(self._error, psycopg.OperationalError)
        ):
            raise RuntimeError(f"load generator failed: {self._error}") from self._error

    @property
    def achieved_rate(self) -> float:
        return self.committed / self.seconds if self.seconds else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=100)
    args = parser.parse_args()
    with LoadGenerator(rate=args.rate) as load:
        time.sleep(args.seconds)
    print(f"committed {load.committed} transactions, {load.achieved_rate:.0f}/s")


if __name__ == "__main__":
    main()
