"""A fault-injecting HTTP proxy for tests: it sits in front of a real OpenAI-compatible server (the
workbench's llama_cpp.server) on loopback and, per request, forwards it or injects a fault.

Faults, taken from a queue (``proxy.schedule("500", "429", ...)``) one per request, then ``default``
(only for requests to ``fault_paths``; the others pass):

* ``pass``  forward to the upstream server (a streamed answer is streamed back as it comes)
* ``500``   answer HTTP 500 with an OpenAI-style error body
* ``429``   answer HTTP 429 with ``Retry-After: <retry_after>``
* ``hang``  read the request, then send nothing for ``hang_s`` seconds (past the client's timeout)
* ``drop``  close the connection without any response
* ``dead``  like ``drop`` for every request while set as the default (a provider that is down)

``max_in_flight`` (if set) models a provider's concurrency limit: a request to ``fault_paths``
that arrives while that many are already being answered gets ``429`` with ``Retry-After`` (counted
in ``faults["429"]``), whatever the queue says.

The upstream being down (killed server) is not a fault of the proxy: it then drops the client's
connection, as a transparent TCP proxy would. ``requests`` counts requests per path, ``faults`` the
faults injected. ``on_request`` (if set) is called with the request number before anything else.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class FaultProxy:
    def __init__(self, upstream: str, *, default: str = "pass", retry_after: float = 1.0, hang_s: float = 5.0,
                 fault_paths: tuple[str, ...] = ("/chat/completions", "/completions", "/embeddings"), max_in_flight: int | None = None):
        self.fault_paths = fault_paths  # other requests (token counting, health checks) just pass
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:PORT (no /v1)
        self.default = default
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.requests: Counter = Counter()
        self.faults: Counter = Counter()
        self.n = 0
        self.on_request = None
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def schedule(self, *faults: str) -> None:
        with self._lock:
            self._queue.extend(faults)

    def _next_fault(self) -> tuple[int, str]:
        with self._lock:
            self.n += 1
            if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
                return self.n, "429"
            fault = self._queue.popleft() if self._queue else self.default
            if fault == "pass":
                self.in_flight += 1  # released by _handle once answered
            return self.n, fault

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 with chunked bodies, one request per connection: a stream the upstream cuts
            # half-way ends without its last chunk, which the client sees as an error (as it would
            # from the server itself), not as a short but complete answer.
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _drop(self) -> None:
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.connection.close()
                self.close_connection = True

            def _error(self, status: int, message: str, headers: dict | None = None) -> None:
                body = json.dumps({"error": {"message": message, "type": "injected_fault", "code": status}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.requests[self.path] += 1
                counted = self.path.endswith(proxy.fault_paths)
                n, fault = proxy._next_fault() if counted else (0, "pass")
                try:
                    self._answer(n, fault, body)
                finally:
                    if counted and fault == "pass":
                        proxy._done()

            def _answer(self, n: int, fault: str, body: bytes) -> None:
                if n and proxy.on_request is not None:
                    proxy.on_request(n, self.path)
                if fault != "pass":
                    proxy.faults[fault] += 1
                if fault == "500":
                    return self._error(500, "injected internal server error")
                if fault == "429":
                    return self._error(429, "injected rate limit", {"Retry-After": str(proxy.retry_after)})
                if fault == "hang":
                    time.sleep(proxy.hang_s)
                    return self._drop()
                if fault in ("drop", "dead"):
                    return self._drop()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                try:
                    with httpx.Client(timeout=httpx.Timeout(120.0), trust_env=False) as client:
                        with client.stream(self.command, proxy.upstream + self.path, content=body, headers=headers) as resp:
                            self.send_response(resp.status_code)
                            for k, v in resp.headers.items():
                                if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                                    self.send_header(k, v)
                            self.send_header("Transfer-Encoding", "chunked")
                            self.send_header("Connection", "close")
                            self.end_headers()
                            for chunk in resp.iter_raw():
                                if chunk:
                                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                                    self.wfile.flush()
                            self.wfile.write(b"0\r\n\r\n")
                            self.close_connection = True
                except (httpx.HTTPError, OSError):
                    self._drop()  # upstream down or cut mid-stream: the client sees the connection end

            do_GET = do_POST = _handle

        return Handler
