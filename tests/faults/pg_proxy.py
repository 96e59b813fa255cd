"""A TCP proxy in front of one real PostgreSQL server that acts when a client sends chosen bytes.

The local servers run without SSL, so a client's simple queries cross the wire as text: the
proxy can stop a process at an exact statement (e.g. kill it as pg_restore sends its first COPY,
or as a swap sends its second rename), with no hook in the code under test. When `trigger`
returns True for what a client sent, `action` runs and that chunk is never forwarded.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress


class PgFaultProxy:
    """Forwards 127.0.0.1:<ephemeral> to `upstream_port`; fires `action` once, on the first
    client chunk for which `trigger(chunk)` holds, and drops that chunk and its connection."""

    def __init__(
        self, upstream_port: int, trigger: Callable[[bytes], bool], action: Callable[[], None]
    ) -> None:
        self.upstream_port = upstream_port
        self.trigger = trigger
        self.action = action
        self.fired = False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closing = threading.Event()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @contextmanager
    def running(self) -> Iterator[PgFaultProxy]:
        thread = threading.Thread(target=self._accept, name="pg-fault-proxy", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._closing.set()
            self._listener.close()
            thread.join(timeout=10)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            for source, sink, inspect in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, inspect), daemon=True
                ).start()

    def _fires(self, chunk: bytes) -> bool:
        with self._lock:
            if self.fired or not self.trigger(chunk):
                return False
            self.fired = True
        self.action()
        return True

    def _pump(self, source: socket.socket, sink: socket.socket, inspect: bool) -> None:
        try:
            with suppress(OSError):
                while chunk := source.recv(65536):
                    if inspect and self._fires(chunk):
                        break
                    sink.sendall(chunk)
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
