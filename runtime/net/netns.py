"""Network namespaces and the links cocker puts in them, all through pyroute2 (netlink).

Bridges carry an interface alias `cocker:<store tag>:<network>` so cocker recognises its own
bridges and never adopts or deletes one it did not create (docker0, another store's bridge).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
from collections.abc import Iterator

from common.errors import AlreadyExists, NotFound, PermissionDenied, RuntimeFailure, UsageError
from runtime.net import hostns

NETNS_DIR = "/run/netns"
LOOPBACK_INDEX = 1          # lo is interface 1 in every network namespace
_NS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _netlink_error(e: Exception, what: str) -> RuntimeFailure | PermissionDenied:
    """A one-line error from a pyroute2 NetlinkError (args: code, message) or OSError."""
    code = getattr(e, "code", None) or getattr(e, "errno", None)
    if code == errno.EPERM:
        return PermissionDenied(f"{what}: operation not permitted (run as root)")
    msg = os.strerror(code) if isinstance(code, int) and code > 0 else str(e)
    return RuntimeFailure(f"{what}: {msg}")


@contextlib.contextmanager
def iproute(netns_path: str | None = None) -> Iterator:
    """An IPRoute handle in the host namespace or inside the namespace at `netns_path`."""
    from pyroute2 import IPRoute
    if netns_path is not None and not os.path.exists(netns_path):
        raise NotFound(f"network namespace {netns_path} does not exist")
    try:
        if netns_path is None:
            ipr = IPRoute()
        else:
            try:
                with hostns.inside(netns_path):
                    ipr = IPRoute()
            except OSError:
                # flags=0: never create a namespace behind the caller's back.
                ipr = IPRoute(netns=netns_path, flags=0)
    except OSError as e:
        raise _netlink_error(e, f"cannot open netlink in {netns_path or 'the host'}") from None
    try:
        yield ipr
    finally:
        ipr.close()


def _get_link(ipr, name: str):
    # One RTM_GETLINK by name, not a dump of every link on the host.
    try:
        return ipr.link("get", ifname=name)[0]
    except Exception as e:
        if getattr(e, "code", None) == errno.ENODEV:
            return None
        raise


def link_index(ipr, name: str) -> int | None:
    link = _get_link(ipr, name)
    return None if link is None else link["index"]


def link_exists(name: str) -> bool:
    with iproute() as ipr:
        return link_index(ipr, name) is not None


def link_alias_by_name(name: str) -> tuple[int, str | None] | None:
    """(index, alias) of a host interface, or None when there is no such interface."""
    with iproute() as ipr:
        link = _get_link(ipr, name)
    return None if link is None else (link["index"], link.get_attr("IFLA_IFALIAS"))


def link_alias(ipr, index: int) -> str | None:
    link = ipr.get_links(index)[0]
    return link.get_attr("IFLA_IFALIAS")


# ---- namespaces -----------------------------------------------------------------------

def _check_root(what: str) -> None:
    if os.geteuid() != 0:
        raise PermissionDenied(f"{what} needs root")


def new_netns(name: str) -> str:
    """A persistent, named network namespace (bind-mounted under /run/netns) with lo up,
    for things that are not containers (a service's nginx, tests). Returns its path."""
    from pyroute2 import netns
    if not _NS_NAME_RE.match(name or ""):
        raise UsageError(f"invalid network namespace name {name!r}")
    _check_root("creating a network namespace")
    path = os.path.join(NETNS_DIR, name)
    if os.path.exists(path):
        raise AlreadyExists(f"network namespace {name} already exists")
    try:
        netns.create(name)
    except Exception as e:  # noqa: BLE001 - pyroute2 re-raises the child's error under its own class name
        raise RuntimeFailure(f"cannot create network namespace {name}: {e}") from None
    try:
        setup_none(path)
    except BaseException:
        delete_netns(name)
        raise
    return path


def delete_netns(name: str) -> None:
    """Remove a namespace made by new_netns (idempotent: a missing one is fine)."""
    from pyroute2 import netns
    if not _NS_NAME_RE.match(name or ""):
        raise UsageError(f"invalid network namespace name {name!r}")
    path = os.path.join(NETNS_DIR, name)
    if not os.path.exists(path):
        return
    try:
        netns.remove(name)
    except OSError as e:
        raise RuntimeFailure(f"cannot remove network namespace {name}: {e}") from None


def setup_none(netns_path: str) -> None:
    """cocker's CUSTOM network: an empty namespace with only the loopback up."""
    with iproute(netns_path) as ns:
        try:
            ns.link("set", index=LOOPBACK_INDEX, state="up")
        except Exception as e:  # noqa: BLE001 - pyroute2's NetlinkError or the socket's OSError, one message
            raise _netlink_error(e, f"cannot bring lo up in {netns_path}") from None


# ---- bridges --------------------------------------------------------------------------

def bridge_alias(tag: str, network: str) -> str:
    return f"cocker:{tag}:{network}"


def ensure_bridge(name: str, alias: str, gateway: str, prefixlen: int) -> bool:
    """Create (or adopt our own) bridge `name` with the gateway address, up. Returns True if
    it was created now. Refuses an existing interface that is not this network's bridge."""
    with iproute() as ipr:
        idx = link_index(ipr, name)
        created = False
        try:
            if idx is None:
                # A fixed MAC: otherwise the bridge takes the lowest MAC of its ports and
                # changes it as containers come and go, which breaks their ARP caches.
                mac = bytearray(os.urandom(6))
                mac[0] = (mac[0] & 0xFE) | 0x02             # unicast, locally administered
                ipr.link("add", ifname=name, kind="bridge",
                         address=":".join(f"{b:02x}" for b in mac))
                created = True
                idx = link_index(ipr, name)
                ipr.link("set", index=idx, ifalias=alias)
            elif link_alias(ipr, idx) != alias:
                raise AlreadyExists(f"interface {name} already exists and is not this cocker "
                                    "network's bridge; choose another bridge name")
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                    for a in ipr.get_addr(index=idx, family=2)}
            if (gateway, prefixlen) not in have:
                ipr.addr("add", index=idx, address=gateway, prefixlen=prefixlen)
            ipr.link("set", index=idx, state="up")
        except AlreadyExists:
            raise
        except Exception as e:  # noqa: BLE001 - undo the bridge, whatever netlink raised
            if created:
                with contextlib.suppress(Exception):
                    ipr.link("del", index=idx)
            raise _netlink_error(e, f"cannot set up bridge {name}") from None
    # Port mappings reach containers from 127.0.0.1: the kernel only routes loopback-sourced
    # packets out of an interface with route_localnet set.
    _sysctl(f"net/ipv4/conf/{name}/route_localnet", "1")
    return created


def delete_bridge(name: str, alias: str) -> None:
    """Delete bridge `name` if it is ours (alias matches); otherwise leave it alone."""
    with iproute() as ipr:
        idx = link_index(ipr, name)
        if idx is None or link_alias(ipr, idx) != alias:
            return
        try:
            ipr.link("del", index=idx)
        except Exception as e:  # noqa: BLE001 - pyroute2's NetlinkError or the socket's OSError, one message
            raise _netlink_error(e, f"cannot delete bridge {name}") from None


def ensure_ip_forward() -> bool:
    """Turn on IPv4 forwarding if it is off (containers need it for outbound traffic and
    port mappings). Returns True if cocker changed it. It is left on afterwards: other
    software may have come to rely on it."""
    path = "/proc/sys/net/ipv4/ip_forward"
    with open(path) as f:
        if f.read().strip() == "1":
            return False
    _sysctl("net/ipv4/ip_forward", "1")
    return True


def _sysctl(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    except OSError as e:
        raise RuntimeFailure(f"cannot set sysctl {key.replace('/', '.')}={value}: {e.strerror}") from None


def host_networks(exclude_dev: str | None = None) -> list[tuple[ipaddress.IPv4Network, str]]:
    """IPv4 destinations the host already routes or owns (main table routes and interface
    addresses), excluding the default route and `exclude_dev`: a new subnet must not overlap."""
    out: list[tuple[ipaddress.IPv4Network, str]] = []
    with iproute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for r in ipr.get_routes(family=2, table=254):
            dev = names.get(r.get_attr("RTA_OIF"), "?")
            if r["dst_len"] == 0 or dev == exclude_dev:
                continue
            dst = r.get_attr("RTA_DST")
            if dst:
                out.append((ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False), dev))
        for a in ipr.get_addr(family=2):
            dev = names.get(a["index"], "?")
            if dev in (exclude_dev, "lo"):
                continue
            out.append((ipaddress.IPv4Network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}",
                                             strict=False), dev))
    return out


# ---- veth pairs -------------------------------------------------------------------------

def add_veth(host_name: str, bridge: str, netns_path: str, ifname: str, address: str,
             prefixlen: int, gateway: str) -> None:
    """A veth pair: `host_name` enslaved to `bridge`, its peer created directly inside the
    namespace as `ifname` with the address, lo up and a default route via the gateway."""
    if not os.path.exists(netns_path):
        raise NotFound(f"network namespace {netns_path} does not exist")
    with iproute() as ipr:
        br = link_index(ipr, bridge)
        if br is None:
            raise RuntimeFailure(f"bridge {bridge} has disappeared")
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # Enslaved and up in the same request that creates it.
            ipr.link("add", ifname=host_name, kind="veth", master=br, state="up",
                     peer={"ifname": ifname, "net_ns_fd": fd})
        except Exception as e:  # noqa: BLE001 - pyroute2's NetlinkError or the socket's OSError, one message
            if getattr(e, "code", None) == errno.EEXIST:
                raise AlreadyExists(f"interface {host_name} already exists") from None
            raise _netlink_error(e, f"cannot create veth {host_name} for {netns_path}") from None
        finally:
            os.close(fd)
        try:
            # Hairpin: a container reaching its own published port through a host address
            # gets its packets back out of the port they came in on.
            ipr.brport("set", index=link_index(ipr, host_name), mode=1)
        except Exception as e:  # noqa: BLE001 - undo the veth, whatever netlink raised
            delete_link(host_name)
            raise _netlink_error(e, f"cannot set up bridge port {host_name}") from None
    try:
        with iproute(netns_path) as ns:
            idx = link_index(ns, ifname)
            ns.addr("add", index=idx, address=address, prefixlen=prefixlen)
            ns.link("set", index=idx, state="up")
            ns.link("set", index=LOOPBACK_INDEX, state="up")
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)
    except Exception as e:
        delete_link(host_name)
        if isinstance(e, (NotFound, PermissionDenied, RuntimeFailure)):
            raise
        raise _netlink_error(e, f"cannot configure {ifname} in {netns_path}") from None


def delete_link(name: str) -> bool:
    """Delete an interface if it exists (a veth takes its peer with it)."""
    with iproute() as ipr:
        try:
            ipr.link("del", ifname=name)
        except Exception as e:  # noqa: BLE001 - pyroute2's NetlinkError or the socket's OSError, one message
            if getattr(e, "code", None) == errno.ENODEV:
                return False
            raise _netlink_error(e, f"cannot delete {name}") from None
        return True
