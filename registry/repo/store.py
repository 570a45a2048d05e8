"""The local store under COCKER_HOME: a layout repository plus layer trees and containers."""

from __future__ import annotations

import json
import os

from common.home import DEFAULT_ROOT_HOME, Home, default_home
from registry.repo.layout import GC_GRACE, LayoutRepo

__all__ = ["DEFAULT_ROOT_HOME", "Store", "default_home"]


class Store(LayoutRepo):
    """COCKER_HOME: the OCI layout itself, next to `layers/<diff_id hex>/` (extracted,
    read-only layer trees), `containers/<name>/` and `config/`."""

    def __init__(self, home: str | None = None) -> None:
        self.paths = Home(home)
        self.home = self.paths.root
        super().__init__(self.paths.repository, create=True, url=f"local store {self.home}")
        self.paths.ensure()

    @property
    def layers_dir(self) -> str:
        return self.paths.layers

    @property
    def containers_dir(self) -> str:
        return self.paths.containers

    @property
    def config_dir(self) -> str:
        return self.paths.config

    def container_sources(self) -> dict[str, tuple[str, str]]:
        """container name -> (image reference it was created from, manifest digest)."""
        out: dict[str, tuple[str, str]] = {}
        try:
            names = os.listdir(self.containers_dir)
        except FileNotFoundError:
            return out
        for n in names:
            try:
                with open(self.paths.container_record(n)) as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                continue
            d = rec.get("digest") if isinstance(rec, dict) else None
            if isinstance(d, str):
                out[n] = (str(rec.get("image") or ""), d)
        return out

    def container_pins(self) -> dict[str, str]:
        """container name -> manifest digest it was created from (a gc root)."""
        return {n: d for n, (_image, d) in self.container_sources().items()}

    def gc(self, grace: float = GC_GRACE, dry_run: bool = False,
           extra_roots: list[str] | None = None) -> tuple[int, int]:
        roots = list(self.container_pins().values()) + list(extra_roots or [])
        return super().gc(grace=grace, dry_run=dry_run, extra_roots=roots)
