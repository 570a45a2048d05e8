"""What every command shares: the store location, quietness, the daemon to go through."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.repo.progress import Progress


class Context:
    # a plain class and lazy imports: every command, `container run` included, builds one
    def __init__(self, home: str | None = None, daemon_url: str | None = None,
                 quiet: bool = False) -> None:
        self.home = home
        self.daemon_url = daemon_url
        self.quiet = quiet
        self._store: Any = None

    @property
    def store(self):
        if self._store is None:
            from registry.repo.store import Store
            self._store = Store(self.home)
        return self._store

    def progress(self) -> Progress:
        from registry.repo.progress import Progress
        return Progress(enabled=False if self.quiet else None)
