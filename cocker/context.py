"""What every command shares: the store location, quietness, the daemon to go through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from registry.repo.progress import Progress


@dataclass
class Context:
    home: str | None = None
    daemon_url: str | None = None
    quiet: bool = False
    _store: Any = field(default=None, repr=False)

    @property
    def store(self):
        if self._store is None:
            from registry.repo.store import Store
            self._store = Store(self.home)
        return self._store

    def progress(self) -> Progress:
        return Progress(enabled=False if self.quiet else None)
