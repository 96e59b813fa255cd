"""HTTP sink for the Slack incoming webhook and the PagerDuty Events API v2, on 127.0.0.1.

It records every request (path and JSON body) in arrival order and answers as the real services
do: a Slack webhook answers 200 ``ok``; ``/v2/enqueue`` answers 202 with the event's
``dedup_key``. A request is recorded before it is answered, so once a sender returns, what it sent
is in `requests`: tests count without waiting.

Point the connections at it: Slack ``slackwebhook`` with host ``http://127.0.0.1:PORT/slack``,
PagerDuty ``pagerduty_events`` with host ``http://127.0.0.1:PORT`` (see include/backup_dr/alerts.py).

Run by hand: ``python -m local.http_sink --port P`` prints each request as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    path: str
    body: Any  # the decoded JSON, or the text when it is not JSON


class HttpSink:
    """A threaded HTTP server that keeps every POST it receives."""

    def __init__(self, port: int = 0, *, echo: bool = False) -> None:
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                sink.record(Request(self.path, body), echo)
                if self.path.rstrip("/").endswith("/v2/enqueue"):
                    key = body.get("dedup_key") if isinstance(body, dict) else None
                    answer = {"status": "success", "message": "Event processed"}
                    self._answer(
                        202, "application/json", {**answer, "dedup_key": key or uuid.uuid4().hex}
                    )
                else:
                    self._answer(200, "text/html", "ok")

            def _answer(self, status: int, content_type: str, payload: Any) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the recorded requests are the log."""

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def record(self, request: Request, echo: bool) -> None:
        with self._lock:
            self.requests.append(request)
        if echo:
            print(json.dumps({"path": request.path, "body": request.body}), flush=True)

    def received(self, prefix: str) -> list[Any]:
        """The bodies received on paths under `prefix`, oldest first."""
        with self._lock:
            return [r.body for r in self.requests if r.path.startswith(prefix)]

    def __enter__(self) -> HttpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP sink for Slack and PagerDuty alerts")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with HttpSink(args.port, echo=True) as sink:
        print(f"HTTP sink on {sink.url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
