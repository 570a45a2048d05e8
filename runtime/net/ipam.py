"""Network records and address management, persisted under COCKER_HOME/networks/.

One JSON file per network (`<name>.json`) holds its subnet, bridge and endpoints (owner ->
address and veth). Every change happens under `locked(store)`, so two cocker processes never
hand out the same address. This module does no kernel work: it is plain bookkeeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Iterator

from common.errors import AlreadyExists, CockerError, NotFound, UsageError
from common.fsutil import atomic_write, flock

DEFAULT_NETWORK = "bridge"
DEFAULT_BRIDGE = "cocker0"
DEFAULT_SUBNET = "10.88.0.0/16"
# Named networks without --subnet get the first free /24 from this private pool.
AUTO_POOL = ipaddress.IPv4Network("10.89.0.0/16")
RESERVED = {"host", "none", "default", "container", "ports"}  # ports.json is the port table

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def networks_dir(store) -> str:
    return store.paths.networks


@contextlib.contextmanager
def locked(store) -> Iterator[None]:
    """The store's network lock (IPAM, endpoints, port table)."""
    with flock(os.path.join(networks_dir(store), ".lock"), what="the network state"):
        yield


def store_tag(store) -> str:
    """A short id of the store: bridges and iptables rules carry it, so two stores on one
    host never mistake each other's objects for their own."""
    return hashlib.sha256(os.path.realpath(store.home).encode()).hexdigest()[:8]


def validate_network_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(f"invalid network name {name!r}: use lowercase letters, digits, '.', '_' "
                         "or '-' (at most 63 characters)")
    return name


def validate_ifname(name: str) -> str:
    if not _IFNAME_RE.match(name or ""):
        raise UsageError(f"invalid interface name {name!r}: at most 15 characters of letters, "
                         "digits, '.', '_' or '-'")
    return name


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise UsageError(f"invalid subnet {text!r}: expected an IPv4 CIDR like 10.89.0.0/24") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise UsageError(f"invalid subnet {text!r}: only IPv4 subnets are supported")
    if str(net.network_address) != text.split("/")[0]:
        raise UsageError(f"invalid subnet {text!r}: host bits are set (did you mean {net}?)")
    if "/" not in text:
        raise UsageError(f"invalid subnet {text!r}: give a prefix length, e.g. {text}/24")
    if net.prefixlen > 29 or net.prefixlen < 8:
        raise UsageError(f"invalid subnet {text!r}: the prefix length must be between 8 and 29")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified:
        raise UsageError(f"invalid subnet {text!r}: not usable for a bridge network")
    if not net.is_private or net.subnet_of(ipaddress.IPv4Network("100.64.0.0/10")):
        # A public range on a NATed bridge would hijack those addresses for every container
        # (the C cocker's 166.88.0.0/24 did exactly that).
        raise UsageError(f"subnet {text} is a public range: use a private one "
                         "(10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16)")
    return net


def default_settings(store) -> dict:
    """The default network's bridge and subnet: environment (COCKER_BRIDGE,
    COCKER_BRIDGE_SUBNET), else config/network.json {"bridge":..., "subnet":...}, else
    cocker0 on 10.88.0.0/16."""
    conf: dict = {}
    with contextlib.suppress(OSError, ValueError):
        with open(store.paths.config_file("network.json")) as f:
            conf = json.load(f)
    bridge = os.environ.get("COCKER_BRIDGE") or conf.get("bridge") or DEFAULT_BRIDGE
    subnet = os.environ.get("COCKER_BRIDGE_SUBNET") or conf.get("subnet") or DEFAULT_SUBNET
    return {"bridge": validate_ifname(bridge), "subnet": str(parse_subnet(subnet))}


def record_path(store, name: str) -> str:
    return os.path.join(networks_dir(store), validate_network_name(name) + ".json")


def new_record(name: str, subnet: ipaddress.IPv4Network, bridge: str) -> dict:
    return {"name": name, "subnet": str(subnet), "gateway": str(subnet.network_address + 1),
            "bridge": bridge, "default": name == DEFAULT_NETWORK, "created": int(time.time()),
            "seq": 0, "endpoints": {}}


def load(store, name: str) -> dict | None:
    try:
        with open(record_path(store, name)) as f:
            rec = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CockerError(f"network {name}: unreadable record {record_path(store, name)}: {e}") from None
    rec.setdefault("endpoints", {})
    return rec


def load_or_default(store, name: str) -> dict:
    """The record of `name`; the default network exists implicitly (from its settings) until
    it is first used."""
    rec = load(store, name)
    if rec is None:
        if name != DEFAULT_NETWORK:
            raise NotFound(f"no such network: {name}")
        s = default_settings(store)
        rec = new_record(name, ipaddress.IPv4Network(s["subnet"]), s["bridge"])
    elif rec.get("default") and not rec["endpoints"] and not rec.get("configured"):
        # Unused default network: follow changed settings.
        s = default_settings(store)
        if (s["subnet"], s["bridge"]) != (rec["subnet"], rec["bridge"]):
            rec.update(new_record(name, ipaddress.IPv4Network(s["subnet"]), s["bridge"]),
                       seq=rec.get("seq", 0))
    return rec


def write_state(path: str, obj) -> None:
    """Replace a state file atomically (tmp + rename; writers hold the network lock).
    No fsync, on purpose: the state describes kernel objects (veths, bridges, rules) that do
    not survive a power loss either, and a crashed process loses nothing from the page cache.
    It keeps connect/disconnect quick on a busy disk."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n", durable=False)


def save(store, rec: dict) -> None:
    write_state(record_path(store, rec["name"]), rec)


def delete(store, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(store, name))


def all_records(store) -> list[dict]:
    out: list[dict] = []
    try:
        names = sorted(os.listdir(networks_dir(store)))
    except FileNotFoundError:
        return out
    for fn in names:
        if fn.endswith(".json") and not fn.startswith(".") and fn != "ports.json":
            with contextlib.suppress(UsageError):
                rec = load(store, fn[:-5])
                if rec is not None:
                    out.append(rec)
    return out


def overlapping(subnet: ipaddress.IPv4Network, records: list[dict]) -> dict | None:
    for r in records:
        if ipaddress.IPv4Network(r["subnet"]).overlaps(subnet):
            return r
    return None


def allocate(rec: dict, owner: str, requested: str | None = None) -> str:
    """Pick the lowest free address (or check `requested`) for `owner`; the caller saves."""
    net = ipaddress.IPv4Network(rec["subnet"])
    gateway = ipaddress.ip_address(rec["gateway"])
    taken = {ipaddress.ip_address(e["ip"]) for e in rec["endpoints"].values()}
    if requested is not None:
        try:
            ip = ipaddress.ip_address(requested)
        except ValueError:
            raise UsageError(f"invalid IP address {requested!r}") from None
        if ip not in net:
            raise UsageError(f"IP address {ip} is outside the subnet {net} of network {rec['name']}")
        if ip in (net.network_address, net.broadcast_address):
            raise UsageError(f"IP address {ip} is the network or broadcast address of {net}")
        if ip == gateway:
            raise UsageError(f"IP address {ip} is the gateway of network {rec['name']}")
        if ip in taken:
            holder = next(o for o, e in rec["endpoints"].items() if e["ip"] == str(ip))
            raise AlreadyExists(f"IP address {ip} is already in use by {holder} on network {rec['name']}")
        return str(ip)
    for ip in net.hosts():
        if ip != gateway and ip not in taken:
            return str(ip)
    raise CockerError(f"network {rec['name']} ({net}) has no free address left")


def veth_name(store, rec: dict, owner: str) -> str:
    """A host-side veth name (<= 15 chars), unique by construction: a hash of store, network,
    owner and the network's counter, which the caller bumps under the lock."""
    rec["seq"] = rec.get("seq", 0) + 1
    h = hashlib.sha256(f"{store_tag(store)}\0{rec['name']}\0{owner}\0{rec['seq']}".encode())
    return "vck" + h.hexdigest()[:10]


def named_bridge(store, name: str) -> str:
    return "ck-" + hashlib.sha256(f"{store_tag(store)}\0{name}".encode()).hexdigest()[:8]
