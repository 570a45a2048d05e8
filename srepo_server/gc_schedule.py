"""`srepo-server --gc-interval`: the repository's one gc (srepo_server.http_store.gc, which is
registry.repo.gc plus the HTTP door's own markers) run periodically beside the doors.

Safe while clients push: blobs a push relies on are leased, uploads in progress are locked,
and nothing younger than the grace is swept."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from common.errors import CockerError
from registry.repo.layout import LayoutRepo
from srepo_server import http_store


def start(root: str, interval: float, grace: float,
          log: Callable[[str], None] | None = None) -> threading.Event:
    """Run gc every `interval` seconds in a daemon thread; set the returned event to stop."""
    stop = threading.Event()
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))

    def loop() -> None:
        while not stop.wait(interval):
            try:
                removed, freed = http_store.gc(LayoutRepo(root), grace=grace)
            except CockerError as e:  # a full disk or a lock held too long: try next time
                say(f"srepo-server: gc failed: {e}")
                continue
            if removed:
                say(f"srepo-server: gc removed {removed} blob(s), {freed} bytes")

    threading.Thread(target=loop, name="gc", daemon=True).start()
    return stop
