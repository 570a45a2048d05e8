"""Home: the one object that names every path under a cocker store (COCKER_HOME).

The repository part of the store (`oci-layout`, `index.json`, `blobs/`, `refs/`, `tmp/`) is
owned by the repository layout; Home names the rest and where that layout lives. No other
module joins a store path by hand: add a name here instead.
"""

from __future__ import annotations

import os

DEFAULT_ROOT_HOME = "/var/lib/cocker"


def default_home() -> str:
    """COCKER_HOME, else /var/lib/cocker for root, else the XDG data dir."""
    env = os.environ.get("COCKER_HOME")
    if env:
        return env
    if os.geteuid() == 0:
        return DEFAULT_ROOT_HOME
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(xdg, "cocker")


class Home:
    """Paths under one store root. Pure naming: nothing here touches the disk but `ensure`."""

    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root or default_home())

    def __repr__(self) -> str:
        return f"Home({self.root!r})"

    # -- the repository layout (owned by the layout class; named here so callers agree)
    @property
    def repository(self) -> str:
        return self.root

    # -- layer trees: extracted, read-only overlay lower dirs, one per diff_id
    @property
    def layers(self) -> str:
        return os.path.join(self.root, "layers")

    def layer(self, diff_hex: str) -> str:
        return os.path.join(self.layers, diff_hex)

    # -- containers
    @property
    def containers(self) -> str:
        return os.path.join(self.root, "containers")

    def container(self, name: str) -> str:
        return os.path.join(self.containers, name)

    def container_record(self, name: str) -> str:
        return os.path.join(self.container(name), "container.json")

    def container_restarts(self, name: str) -> str:
        """Who stopped it and how often it was restarted (runtime/container/restart_policy.py)."""
        return os.path.join(self.container(name), "restart.json")

    def container_hosts(self, name: str) -> str:
        """The container's /etc/hosts (runtime/net/names.py keeps it in step)."""
        return os.path.join(self.container(name), "hosts")

    # -- configuration and state
    @property
    def config(self) -> str:
        return os.path.join(self.root, "config")

    def config_file(self, name: str) -> str:
        return os.path.join(self.config, name)

    @property
    def networks(self) -> str:
        return os.path.join(self.root, "networks")

    @property
    def port_map(self) -> str:
        return os.path.join(self.networks, "ports.json")

    @property
    def services(self) -> str:
        return os.path.join(self.root, "services")

    @property
    def brocker(self) -> str:
        return os.path.join(self.root, "brocker")

    def brocker_app(self, name: str) -> str:
        return os.path.join(self.brocker, name, "app")

    # -- user namespaces: the slice of the subordinate ids each --userns auto container holds
    @property
    def userns_allocations(self) -> str:
        return os.path.join(self.root, "userns", "allocations.json")

    # -- pushes to HTTP registries cut short: each upload session's location and offset,
    #    so the next push continues it instead of starting over
    @property
    def push_sessions(self) -> str:
        return os.path.join(self.root, "push-sessions")

    # -- caches: derived data, safe to delete
    @property
    def cache(self) -> str:
        return os.path.join(self.root, "cache")

    def seccomp_filter(self, key: str) -> str:
        """A seccomp profile compiled to BPF for one (profile, arch, kernel, caps) `key`."""
        return os.path.join(self.cache, "seccomp", f"{key}.bpf")

    def ensure(self) -> None:
        """Create the store's own directories (not the repository layout's)."""
        for d in (self.layers, self.containers, self.config):
            os.makedirs(d, exist_ok=True)
