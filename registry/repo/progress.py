"""Progress bars (tqdm) for transfers and packing; silent when not on a terminal or when quiet."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    """Hands out one bar per blob plus an overall bar; thread-safe."""

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("COCKER_QUIET")
        self.enabled = enabled
        self._lock = threading.Lock()
        self._overall: Any = None
        self._pos = 1

    def total(self, label: str, nbytes: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        with self._lock:
            if self._overall is not None:
                self._overall.close()
            self._overall = tqdm(total=nbytes, desc=label, unit="B", unit_scale=True,
                                 unit_divisor=1024, position=0, leave=True, file=sys.stderr)

    def bar(self, label: str, size: int | None, initial: int = 0) -> Any:
        if not self.enabled:
            return _NullBar()
        from tqdm import tqdm
        with self._lock:
            pos = self._pos
            self._pos += 1
        t = tqdm(total=size, initial=initial, desc=label, unit="B", unit_scale=True,
                 unit_divisor=1024, position=pos, leave=False, file=sys.stderr)
        overall = self._overall

        class _Bar:
            def update(self, n: int) -> None:
                t.update(n)
                if overall is not None:
                    overall.update(n)

            def close(self) -> None:
                t.close()

        return _Bar()

    def close(self) -> None:
        with self._lock:
            if self._overall is not None:
                self._overall.close()
                self._overall = None
