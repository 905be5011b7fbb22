"""A unix-socket relay in front of a ``p11-kit server``: latency and outages of a network HSM.

Every chunk a client sends reaches the server ``delay`` seconds after it arrived (a delay line,
not a queue: chunks of one message arrive together and leave together), so each PKCS#11 call
through p11-kit's remote client costs ``delay`` more; answers come back at once. While
``refusing`` is set, new connections are closed at once, as by an HSM that cannot be reached.
Nothing is parsed or changed: the server is real and sees every byte.

Two threads serve every connection: one reads all sockets (``selectors``), one writes the delay
line, sleeping until each chunk is due, so the relay costs little CPU however many workers
connect, and its delay is as precise as a timed condition wait.

Run as a process for benchmarks: ``python -m tests.socket_relay LISTEN TARGET --delay-ms 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import selectors
import signal
import socket
import threading
import time
from pathlib import Path

_CHUNK = 65536
_POLL_SECONDS = 0.1


class SocketRelay:
    """Accepts on ``listen`` and relays each connection to ``target``."""

    def __init__(self, listen: Path, target: Path, delay: float = 0.0) -> None:
        self.listen = listen
        self.target = target
        self.delay = delay
        self.refusing = False
        self.connections = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(listen))
        self._server.listen(1024)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server, selectors.EVENT_READ)
        # (due, order, destination, chunk); an empty chunk ends the destination's output.
        self._line: list[tuple[float, int, socket.socket, bytes]] = []
        self._order = itertools.count()
        self._due = threading.Condition()
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._read, name="relay-read", daemon=True),
            threading.Thread(target=self._write, name="relay-write", daemon=True),
        ]

    @property
    def address(self) -> str:
        """P11_KIT_SERVER_ADDRESS for clients of the relay."""
        return f"unix:path={self.listen}"

    def start(self) -> SocketRelay:
        """Start relaying in background threads."""
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop relaying, close every socket and remove the listening one."""
        self._stopped.set()
        with self._due:
            self._due.notify()
        for thread in self._threads:
            thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        with contextlib.suppress(FileNotFoundError):
            self.listen.unlink()

    def _read(self) -> None:
        while not self._stopped.is_set():
            for key, _ in self._selector.select(_POLL_SECONDS):
                if key.fileobj is self._server:
                    self._accept()
                else:
                    self._forward(key.fileobj, key.data)  # type: ignore[arg-type]

    def _accept(self) -> None:
        client, _ = self._server.accept()
        if self.refusing:
            client.close()
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(str(self.target))
        except OSError:
            client.close()
            upstream.close()
            return
        self.connections += 1
        self._selector.register(client, selectors.EVENT_READ, (upstream, self.delay))
        self._selector.register(upstream, selectors.EVENT_READ, (client, 0.0))

    def _forward(self, source: socket.socket, route: tuple[socket.socket, float]) -> None:
        destination, delay = route
        try:
            chunk = source.recv(_CHUNK)
        except OSError:
            chunk = b""
        if not chunk:
            self._selector.unregister(source)
        if delay:
            with self._due:
                heapq.heappush(
                    self._line, (time.monotonic() + delay, next(self._order), destination, chunk)
                )
                self._due.notify()
        else:
            _send(destination, chunk)

    def _write(self) -> None:
        while not self._stopped.is_set():
            with self._due:
                if not self._line:
                    self._due.wait(_POLL_SECONDS)
                    continue
                wait = self._line[0][0] - time.monotonic()
                if wait > 0:
                    self._due.wait(wait)
                    continue
                _, _, destination, chunk = heapq.heappop(self._line)
            _send(destination, chunk)


def _send(destination: socket.socket, chunk: bytes) -> None:
    """Pass a chunk on; an empty one ends the destination's output (its peer closed)."""
    try:
        if chunk:
            destination.sendall(chunk)
        else:
            destination.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the other side is gone; its own end of file closes the pair


def main() -> None:
    """Run a relay until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("listen", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    relay = SocketRelay(args.listen, args.target, args.delay_ms / 1000).start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    relay.stop()


if __name__ == "__main__":
    main()
