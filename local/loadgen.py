"""A small, steady write load on the platform server, so replication lag is measured under load.

    python -m local.loadgen --seconds 60 --rate 200

Each write is one committed transaction (an insert into ``public.loadgen_orders`` of
``platform_core``), paced on a fixed grid so the rate holds whatever the commit latency.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field

from local import pg

DATABASE = "platform_core"
TABLE = "public.loadgen_orders"


@dataclass
class LoadGenerator:
    """Runs in a thread while used as a context manager; counts what it committed."""

    rate: float = 100.0  # transactions per second
    database: str = DATABASE
    committed: int = 0
    seconds: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def __enter__(self) -> LoadGenerator:
        with pg.connect(self.database) as conn:
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
            with pg.connect(self.database) as conn:
                tick = 0
                while not self._stop.is_set():
                    conn.execute(f"INSERT INTO {TABLE} (amount) VALUES (%s)", (tick % 1000,))
                    self.committed += 1
                    tick += 1
                    delay = started + tick / self.rate - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
        except BaseException as exc:  # reported by __exit__
            self._error = exc
        finally:
            self.seconds = time.monotonic() - started

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._error is not None:
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
