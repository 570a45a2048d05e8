"""The local store under COCKER_HOME: a layout repository plus layer trees and containers."""

from __future__ import annotations

import json
import os

from registry.layout import LayoutRepo

DEFAULT_ROOT_HOME = "/var/lib/cocker"


def default_home() -> str:
    env = os.environ.get("COCKER_HOME")
    if env:
        return env
    if os.geteuid() == 0:
        return DEFAULT_ROOT_HOME
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(xdg, "cocker")


class Store(LayoutRepo):
    """COCKER_HOME: the OCI layout itself, next to `layers/<diff_id hex>/` (extracted,
    read-only layer trees), `containers/<name>/` and `config/`."""

    def __init__(self, home: str | None = None) -> None:
        self.home = os.path.abspath(home or default_home())
        super().__init__(self.home, create=True, url=f"local store {self.home}")
        for sub in ("layers", "containers", "config"):
            os.makedirs(os.path.join(self.home, sub), exist_ok=True)

    @property
    def layers_dir(self) -> str:
        return os.path.join(self.home, "layers")

    @property
    def containers_dir(self) -> str:
        return os.path.join(self.home, "containers")

    @property
    def config_dir(self) -> str:
        return os.path.join(self.home, "config")

    def container_pins(self) -> dict[str, str]:
        """container name -> manifest digest it was created from (a gc root)."""
        pins: dict[str, str] = {}
        try:
            names = os.listdir(self.containers_dir)
        except FileNotFoundError:
            return pins
        for n in names:
            try:
                with open(os.path.join(self.containers_dir, n, "container.json")) as f:
                    d = json.load(f).get("digest")
            except (OSError, ValueError):
                continue
            if isinstance(d, str):
                pins[n] = d
        return pins

    def gc(self, extra_roots: list[str] | None = None, grace: float = 3600.0,
           dry_run: bool = False) -> tuple[int, int]:
        roots = list(self.container_pins().values()) + list(extra_roots or [])
        return super().gc(roots, grace=grace, dry_run=dry_run)
