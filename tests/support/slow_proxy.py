"""A TCP proxy on 127.0.0.1 that forwards to a server at a bounded rate, so a test can cut
the server off in the middle of a request body; stopped (and its sockets closed) by stop()."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class SlowProxy:
    def __init__(self, target_port: int, bytes_per_second: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.rate = bytes_per_second
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()  # the server is down: the client sees a reset, as it would
                continue
            self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, self.rate),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rate: int | None) -> None:
        piece = 64 << 10
        try:
            while data := src.recv(piece):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            # Reset both ends, as a dead server's kernel does: a client still sending gets
            # an error at once instead of filling a buffer nobody reads.
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
