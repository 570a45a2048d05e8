"""What the monitor and the container's first process need to start: built by the container's
lifecycle from its record, read by the forked processes."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.process.userns import IdMap


@dataclass
class Plan:
    """What the supervisor and workload need; built by the lifecycle from the record."""
    name: str
    cdir: str
    argv: list[str]
    env: list[str]
    workdir: str
    hostname: str
    lowerdir: str
    volumes: list[tuple[str, str, bool]]
    own_netns: bool
    cgroup_dirs: list[str]
    tty: bool = False
    detached: bool = True
    user: str = ""
    home: str = ""              # COCKER_HOME, for the network teardown
    network: str | None = None  # bridge/named network to disconnect at the end
    published: bool = False
    host_netns_fd: int = -1
    volatile: bool = False      # a throw-away container (--rm): overlay without syncs
    autoremove: bool = False    # `run -d --rm`: the supervisor deletes the container at the end
    idmap: IdMap | None = None  # --userns auto: container ids 0.. are these host ids
    userns_fd: int = -1         # the user namespace with that map, made before fork


@dataclass
class Launched:
    pid: int          # supervisor pid on the host
    go_w: int         # write b"g" to let the workload start
    err_r: int        # EOF when the workload exec'd; a message when it could not

