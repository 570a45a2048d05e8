"""What the monitor and the container's first process need to start: built by the container's
lifecycle from its record on the host side, read by the forked processes (which must not read
files or compile anything of their own once inside the container)."""

from typing import NamedTuple

from runtime.process.confinement import Confinement
from runtime.process.userns import IdMap


class Device(NamedTuple):
    """A host device node given to the container (--device HOST[:CTR])."""
    host: str
    ctr: str                    # absolute, under /dev
    kind: str                   # "c" or "b"
    major: int
    minor: int

    @property
    def cgroup_rule(self) -> str:
        return f"{self.kind} {self.major}:{self.minor} rwm"


class Plan(NamedTuple):
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
    volatile: bool = False      # a throw-away container (--rm): overlay without syncs
    autoremove: bool = False    # `run -d --rm`: the monitor deletes the container at the end
    confinement: Confinement | None = None
    privileged: bool = False    # no masked or read-only kernel paths, /sys writable
    read_only: bool = False     # the rootfs mounted read-only
    init_binary: str | None = None   # host path of tini/catatonit, bound at INIT_PATH
    devices: tuple[Device, ...] = ()
    idmap: IdMap | None = None  # --userns auto: container ids 0.. are these host ids
    userns_fd: int = -1         # the user namespace with that map, made before fork


# where --init's binary appears inside: on the container's own /dev tmpfs, so nothing is created
# in the image's tree (a commit must not pick up a mount point)
INIT_PATH = "/dev/init"


class Launched(NamedTuple):
    pid: int          # the monitor's pid on the host
    init_pid: int     # the container's PID 1, as the host sees it
    go_w: int         # write b"g" to let the workload start
    err_r: int        # EOF when the workload exec'd; a message when it could not
