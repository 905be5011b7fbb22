"""A unix-socket relay in front of a ``p11-kit server``: latency and outages of a network HSM.

Every chunk a client sends reaches the server ``delay`` seconds after it arrived (a delay line,
not a queue: chunks of one message arrive together and leave together), so each PKCS#11 call
through p11-kit's remote client costs at least ``delay`` more. While ``refusing`` is set, new
connections are closed at once, as by an HSM that cannot be reached. Nothing is parsed or
changed: the server is real and sees every byte.

Run as a process for benchmarks: ``python -m tests.socket_relay LISTEN TARGET --delay-ms 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import signal
import socket
import threading
import time
from pathlib import Path

_CHUNK = 65536


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
        self._server.listen(256)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="relay-accept", daemon=True)

    @property
    def address(self) -> str:
        """P11_KIT_SERVER_ADDRESS for clients of the relay."""
        return f"unix:path={self.listen}"

    def start(self) -> SocketRelay:
        """Start accepting in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting; open connections end when their peers close them."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.listen.unlink()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            self.connections += 1
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(self.target))
            except OSError:
                client.close()
                upstream.close()
                continue
            pumps = self._pump(client, upstream, self.delay) + self._pump(upstream, client, 0.0)
            threading.Thread(
                target=_close_after, args=(pumps, client, upstream), daemon=True
            ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, delay: float
    ) -> list[threading.Thread]:
        line: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            try:
                while chunk := source.recv(_CHUNK):
                    line.put((time.monotonic() + delay, chunk))
            except OSError:
                pass
            line.put((0.0, b""))

        def write() -> None:
            try:
                while True:
                    due, chunk = line.get()
                    if not chunk:
                        break
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    sink.sendall(chunk)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        threads = [
            threading.Thread(target=read, daemon=True),
            threading.Thread(target=write, daemon=True),
        ]
        for thread in threads:
            thread.start()
        return threads


def _close_after(threads: list[threading.Thread], *sockets: socket.socket) -> None:
    for thread in threads:
        thread.join()
    for sock in sockets:
        sock.close()


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
