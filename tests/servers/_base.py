"""Shared plumbing for the loopback stand-ins: threading, recording, scripted faults.

Each stand-in answers exactly what the real service's published contract allows, so the
plumbing here is deliberately dumb: it parses HTTP, records everything, and hands the
request to the subclass. Connection-level misbehaviour (resets, refusing connections)
lives here because it has to happen below the HTTP layer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import threading
import traceback
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from requests.structures import CaseInsensitiveDict

_S = TypeVar("_S", bound="LoopbackServer")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it, kept so tests can assert on what the client sent."""

    method: str
    path: str
    query: dict[str, str]
    headers: CaseInsensitiveDict[str]
    body: bytes
    json: Any = None
    """Parsed JSON body, or None when the body was empty or not JSON."""


@dataclass
class Reply:
    """What to send back; ``abort`` closes the connection with a TCP RST instead."""

    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    abort: bool = False

    @classmethod
    def json(cls, status: int, payload: Any, headers: Iterable[tuple[str, str]] = (),
             content_type: str = "application/json; charset=utf-8") -> Reply:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status, body, [("Content-Type", content_type), *headers])


@dataclass
class Fault:
    """A scripted answer that replaces normal processing for the next matching request(s)."""

    kind: str
    method: str
    remaining: int
    status: int = 0
    retry_after: int | None = None
    seconds: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real front doors do
    timeout = 30
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this, +40 ms an answer
    server: _HTTPServer

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            # The handshake runs here, in the connection's thread, so one stalled client
            # cannot block the accept loop.
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr log; tests inspect ``server.requests`` instead."""

    def _dispatch(self) -> None:
        owner = self.server.owner
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(dict(self.headers.items()))
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        request = RecordedRequest(self.command, split.path, query, headers, body, parsed)
        owner._record(request)
        try:
            reply = owner.handle(request)
        except Exception:
            owner._record_error(traceback.format_exc())
            reply = Reply(500, b"stand-in crashed; see server.errors", [("Content-Type", "text/plain")])
        if reply is None or reply.abort:
            self._abort()
            return
        self._write(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _write(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _abort(self) -> None:
        """Reset the connection (RST, not FIN) so the client sees a genuine reset."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.wfile.close()
            self.connection.close()
        except OSError:
            pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops SYNs under concurrent tests: 1 s retransmits
    owner: LoopbackServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client hang-ups are part of the tests; don't spray tracebacks on stderr."""


class LoopbackServer:
    """A threaded HTTP(S) server on 127.0.0.1 with an ephemeral port.

    Subclasses implement :meth:`handle`. Starting costs one bind and one thread, so
    function-scoped fixtures stay cheap.
    """

    scheme = "http"

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._errors: list[str] = []
        self._faults: deque[Fault] = deque()
        self._connections: set[socket.socket] = set()
        self._ssl_context = ssl_context
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self.stopping = threading.Event()

    # -- lifecycle -------------------------------------------------------------------
    def start(self: _S) -> _S:
        """Bind and serve; a no-op if already serving."""
        if self._httpd is None:
            self.stopping.clear()
            self._listen()
        return self

    def _listen(self) -> None:
        httpd = _HTTPServer(("127.0.0.1", self._port), _Handler, bind_and_activate=False)
        httpd.allow_reuse_address = True
        httpd.owner = self
        httpd.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        httpd.server_bind()
        httpd.server_activate()
        if self._ssl_context is not None:
            httpd.socket = self._ssl_context.wrap_socket(
                httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self._port = httpd.server_address[1]
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        self._httpd, self._thread = httpd, thread

    def _unlisten(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.stopping.set()
        self._unlisten()

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._port}"

    # -- connection-level faults -------------------------------------------------------
    def down(self) -> None:
        """Stop listening and drop open connections: new connections are refused."""
        self._unlisten()

    def up(self) -> None:
        """Listen again on the same port after :meth:`down`."""
        if self._httpd is None:
            self._listen()

    # -- recording ---------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[str]:
        """Tracebacks from inside the stand-in; a non-empty list is a bug in the stand-in."""
        with self._lock:
            return list(self._errors)

    def reset_state(self) -> None:
        """Forget recorded traffic and pending faults; configuration is kept."""
        with self._lock:
            self._requests.clear()
            self._errors.clear()
            self._faults.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _record_error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # -- scripted faults ---------------------------------------------------------------
    def _push_fault(self, fault: Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str) -> Fault | None:
        """Consume one use of the oldest pending fault scripted for ``method``."""
        with self._lock:
            for fault in self._faults:
                if fault.method in (method, "*"):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    @property
    def pending_faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def sleep(self, seconds: float) -> bool:
        """Sleep unless the server is stopped first; returns False if it was stopped."""
        return not self.stopping.wait(seconds)

    # -- to implement ------------------------------------------------------------------
    def handle(self, request: RecordedRequest) -> Reply | None:
        """Answer one request; ``None`` resets the connection."""
        raise NotImplementedError
