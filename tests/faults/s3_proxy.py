"""A small HTTP proxy in front of one real S3 server that injects faults into chosen requests.

Requests pass through byte for byte (the Host header included, so SigV4 signatures still match).
A rule sees each request and may answer `503 SlowDown` with S3's XML error body, as S3 does
when a prefix is throttled, or drop it unsent (the client died before its request left). A rule
may also act when a request arrives (e.g. kill the process that sent it), which puts a fault at
an exact point between two requests; `after` acts once a request took effect upstream, before
its sender hears back (the point just after a request, when no request follows it).
"""

from __future__ import annotations

import http.client
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: Hop-by-hop headers, and `Expect` (not signed by SigV4; the proxy answers 100-continue itself).
_NOT_FORWARDED = frozenset({"connection", "keep-alive", "transfer-encoding", "expect"})


@dataclass(frozen=True)
class ProxiedRequest:
    method: str
    path: str  # with the query string
    attempt: int  # botocore's attempt number for this call (1 = first try)
    body: bytes = field(default=b"", repr=False)  # e.g. the keys a DeleteObjects names

    @property
    def operation(self) -> str:
        """A rough S3 operation name, for counting what the fault hit."""
        query = urlsplit(self.path).query
        if self.method == "POST" and query.startswith("delete"):
            return "DeleteObjects"
        if "uploadId=" in query:
            return {"PUT": "UploadPart", "POST": "CompleteMultipartUpload"}.get(
                self.method, f"{self.method} upload"
            )
        if self.method == "POST" and "uploads" in query:
            return "CreateMultipartUpload"
        return self.method


class Fault(Enum):
    """What to do to one request instead of forwarding it."""

    SLOW_DOWN = "answer 503 SlowDown"
    DROP = "close the connection without forwarding"


Rule = Callable[[ProxiedRequest], Fault | None]
After = Callable[[ProxiedRequest], None]

SLOW_DOWN_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    "<Message>Please reduce your request rate.</Message><RequestId>{id}</RequestId></Error>"
)


class S3FaultProxy:
    """Forwards to `upstream` (http://host:port); `rule` decides each request's fault, and
    `after` sees each forwarded request once upstream has answered it."""

    def __init__(self, upstream: str, rule: Rule | None = None, after: After | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rule: Rule = rule or (lambda request: None)
        self.after: After = after or (lambda request: None)
        self.injected: Counter[str] = Counter()  # "<FAULT> <operation>" -> requests
        self.forwarded: Counter[str] = Counter()  # "<operation>" -> requests
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _count(self, counter: Counter[str], key: str) -> None:
        with self._lock:
            counter[key] += 1

    @contextmanager
    def running(self) -> Iterator[S3FaultProxy]:
        thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy")
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the counters say what happened."""

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                attempt = _attempt(self.headers.get("amz-sdk-request", ""))
                request = ProxiedRequest(self.command, self.path, attempt, body)
                fault = proxy.rule(request)
                if fault is None:
                    self._forward(request, body)
                    return
                proxy._count(proxy.injected, f"{fault.name} {request.operation}")
                if fault is Fault.SLOW_DOWN:
                    self._answer_slow_down()
                else:
                    self.close_connection = True

            def _answer_slow_down(self) -> None:
                payload = SLOW_DOWN_BODY.format(id=uuid.uuid4().hex).encode()
                self.send_response(503, "Slow Down")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _forward(self, request: ProxiedRequest, body: bytes) -> None:
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True)
                    for name, value in self.headers.items():
                        if name.lower() not in _NOT_FORWARDED:
                            upstream.putheader(name, value)
                    upstream.endheaders(body or None)
                    response = upstream.getresponse()
                    payload = response.read()
                except OSError:
                    # The server went away: the client sees its connection drop, as it would.
                    self.close_connection = True
                    return
                finally:
                    upstream.close()
                proxy._count(proxy.forwarded, request.operation)
                proxy.after(request)
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in _NOT_FORWARDED and name.lower() != "content-length":
                        self.send_header(name, value)
                length = response.getheader("Content-Length") or "0"
                self.send_header(
                    "Content-Length", length if self.command == "HEAD" else str(len(payload))
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve  # noqa: N815

        return Handler


def _attempt(header: str) -> int:
    """The attempt number from botocore's `amz-sdk-request: attempt=N; max=M` header."""
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == "attempt" and value.isdigit():
            return int(value)
    return 1
