"""Webhook receivers on 127.0.0.1 (random ports, threads), honest and hostile: each connection's
request is read and recorded, then answered by a `respond` function writing raw bytes, so that
a receiver can break HTTP in any way a real one could."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    """One request as the receiver read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Respond = Callable[[socket.socket, "Receiver"], None]


@dataclass
class Receiver:
    """A TCP server answering each request with `respond`; `requests` is what it got."""

    respond: Respond
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    dribbled: int = 0  # bytes a dribbler got out before the client hung up
    hung_up: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    #: False: answer at once, without reading a request (a plain server meeting a TLS hello).
    read_first: bool = True
    #: The address listened on (`::1`: an IPv6 literal in the URL).
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.create_server((self.host, 0), family=family)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/hooks/alerts"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            if not self.read_first:
                self.respond(conn, self)
                return
            request = read_request(conn)
            if request is not None:
                self.requests.append(request)
                self.respond(conn, self)
        except OSError:
            self.hung_up.set()
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.gate.set()
        self._thread.join(5)
        self._listener.close()


def read_request(conn: socket.socket) -> Request | None:
    """Read one HTTP request (headers, then Content-Length bytes of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, value = line.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Request(method, path, headers, body)


def answer(raw: bytes) -> Respond:
    """Answer with these bytes, then close."""

    def respond(conn: socket.socket, receiver: Receiver) -> None:
        conn.sendall(raw)

    return respond


def status(code: int, reason: str = "X", extra: str = "") -> Respond:
    """A well-formed answer with this status (and extra header lines)."""
    return answer(f"HTTP/1.1 {code} {reason}\r\n{extra}Content-Length: 0\r\n\r\n".encode())


def redirect(code: int, location: str) -> Respond:
    return status(code, "Moved", f"Location: {location}\r\n")


def failing(times: int, then: int = 204) -> Respond:
    """503 `times` times, then `then`."""
    left = [times]

    def respond(conn: socket.socket, receiver: Receiver) -> None:
        code = 503 if left[0] > 0 else then
        left[0] -= 1
        status(code)(conn, receiver)

    return respond


def dribble(every_s: float = 0.5) -> Respond:
    """A status line, then one byte of a header every `every_s`, forever (until the client
    hangs up): each read finishes within any per-read timeout."""

    def respond(conn: socket.socket, receiver: Receiver) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        while True:
            try:
                conn.sendall(b"X")
            except OSError:
                receiver.hung_up.set()
                return
            receiver.dribbled += 1
            time.sleep(every_s)

    return respond


def held(then: Respond) -> Respond:
    """Hold the request until the test opens `receiver.gate`, then answer with `then`."""

    def respond(conn: socket.socket, receiver: Receiver) -> None:
        receiver.gate.wait(120)
        then(conn, receiver)

    return respond


def reset(conn: socket.socket, receiver: Receiver) -> None:
    """Close with a TCP reset instead of an answer."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def refused_url() -> str:
    """A URL on a port nothing listens on."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks"
