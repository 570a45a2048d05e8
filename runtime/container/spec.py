"""What a container is made from: the options given at create, checked, and the environment the
container's processes get.

The bridge-network checks import runtime.net only for a bridge network: `run --net none`
is timed against runc.
"""

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from common.errors import UsageError
from registry.repo.store import Store
from runtime.container.record import DEFAULT_PATH, HOST_NETS


class ContainerSpec(NamedTuple):
    # a NamedTuple (changed with _replace): cheaper to define than a dataclass on every start
    image: str
    name: str | None = None
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    hostname: str | None = None
    net: str = "bridge"
    ip: str | None = None
    ports: Sequence[str] = ()
    volumes: Sequence[str] = ()
    env: Sequence[str] = ()
    workdir: str | None = None
    cpus: str | None = None
    cpu_quota: int | None = None
    memory: str | None = None
    pids_limit: int | None = None
    tty: bool = False
    labels: Mapping[str, str] = {}
    restart: str = "no"
    user: str | None = None
    userns: str = ""            # "auto": container root maps to a slice of cocker's subuids
    aliases: Sequence[str] = ()   # more names on its network (names.py)
    # opt-ins out of the default confinement (runtime.container.security)
    privileged: bool = False
    cap_add: Sequence[str] = ()
    cap_drop: Sequence[str] = ()
    security_opt: Sequence[str] = ()
    read_only: bool = False
    devices: Sequence[str] = ()
    init: bool = False


def merge_env(image_env: list[str], extra: Sequence[str], tty: bool,
              hostname: str | None = None) -> list[str]:
    """The environment of the container's processes: the image's Env, then -e values, then
    what the runtime adds when they lack it: PATH, HOSTNAME, TERM (with a tty) and
    container=cocker. HOME comes from the user's passwd entry at exec time."""
    env: dict[str, str] = {}
    for e in image_env:
        k, _, v = e.partition("=")
        env[k] = v
    for e in extra:
        k, sep, v = e.partition("=")
        if not k:
            raise UsageError(f"bad environment entry {e!r}: expected KEY=VALUE")
        if not sep:                      # `-e KEY`: take it from the caller's environment
            if k not in os.environ:
                continue
            v = os.environ[k]
        env[k] = v
    env.setdefault("PATH", DEFAULT_PATH)
    if hostname:
        env.setdefault("HOSTNAME", hostname)
    if tty:
        env.setdefault("TERM", "xterm")
    env.setdefault("container", "cocker")
    return [f"{k}={v}" for k, v in env.items()]


def check_net(store: Store, net: str, ip: str | None, ports: Sequence[str]) -> None:
    if net in HOST_NETS:
        if ip:
            raise UsageError(f"--ip needs a bridge network, not --net {net}")
        if ports:
            raise UsageError(f"-p needs a bridge network, not --net {net}")
        return
    import ipaddress

    from runtime.net import ipam, portmap
    from runtime.net.network import DEFAULT_NETWORK, get_network
    ipam.validate_network_name(net)
    if net != DEFAULT_NETWORK:
        get_network(store, net)          # NotFound for an unknown network
    portmap.parse_all(list(ports))
    if ip:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise UsageError(f"--ip {ip!r} is not an IPv4 address") from None
