"""Bridge networks for containers: the public API (see notes/APIS.md).

- The default network "bridge" is the Linux bridge `cocker0` on 10.88.0.0/16 (private; change it
  with `cocker network create bridge --subnet ...`, config/network.json or COCKER_BRIDGE /
  COCKER_BRIDGE_SUBNET). Its bridge and rules are created on first connect and REMOVED when the
  last endpoint leaves, so an idle host carries nothing of cocker's.
- Named networks get their own bridge (`ck-<hash>` or --bridge) when created; it stays until
  `remove_network`, so its subnet stays reserved on the host (routes are checked for overlap).
- Each endpoint is a veth pair: the host side on the bridge, the peer created directly inside
  the target namespace as eth0 with its address, lo up and a default route via the gateway.
- Outbound NAT and port mappings are iptables rules in cocker's own chains (runtime/net/nat.py).
- Containers on a network find each other by name and alias: their /etc/hosts files are kept
  in step with its endpoints (runtime/net/names.py).

Locking: the store's network lock (IPAM, endpoint and port tables) and then the host lock (bridges,
subnets, chains shared by every store on the host), always in that order.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Iterator, Sequence

from common.errors import AlreadyExists, Conflict, NotFound, PermissionDenied, UsageError
from runtime.net import hostns, ipam, names, nat, portmap
from runtime.net import netns as ns
from runtime.net.netns import delete_netns, new_netns, setup_none  # noqa: F401  (public API)

DEFAULT_NETWORK = ipam.DEFAULT_NETWORK


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise PermissionDenied(f"{what} needs root")


@contextlib.contextmanager
def _locked(store) -> Iterator[None]:
    with ipam.locked(store), nat.host_lock():
        yield


def _gc_host() -> None:
    """After a removal: drop the chains, and the namespace pin, once nothing of cocker's is left."""
    if nat.gc_chains():
        hostns.unpin()


def _alias(store, rec: dict) -> str:
    return ns.bridge_alias(ipam.store_tag(store), rec["name"])


def _check_free_subnet(store, rec: dict, subnet: ipaddress.IPv4Network) -> None:
    """Refuse a subnet that overlaps another network of this store or anything the host routes."""
    others = [r for r in ipam.all_records(store) if r["name"] != rec["name"]]
    if rec["name"] != DEFAULT_NETWORK and ipam.load(store, DEFAULT_NETWORK) is None:
        others.append(ipam.load_or_default(store, DEFAULT_NETWORK))
    clash = ipam.overlapping(subnet, others)
    if clash:
        raise Conflict(f"subnet {subnet} overlaps network {clash['name']} ({clash['subnet']})")
    for net, dev in ns.host_networks(exclude_dev=rec["bridge"] if _is_ours(store, rec) else None):
        if net.overlaps(subnet):
            raise Conflict(f"subnet {subnet} overlaps {net} already routed on this host (via {dev})"
                           + _default_network_hint(rec))


def _default_network_hint(rec: dict) -> str:
    """How to give the default network of a second store (another COCKER_HOME) its own bridge."""
    if rec["name"] != DEFAULT_NETWORK:
        return ""
    return ("; another store's default network may hold it: give this store its own with "
            "COCKER_BRIDGE=<name> and COCKER_BRIDGE_SUBNET=<private CIDR> (or config/network.json)")


def _is_ours(store, rec: dict) -> bool:
    found = ns.link_alias_by_name(rec["bridge"])
    return found is not None and found[1] == _alias(store, rec)


def _bring_up(store, rec: dict) -> bool:
    """Make sure the bridge, its address and its rules exist. True if the bridge was created."""
    subnet = ipaddress.IPv4Network(rec["subnet"])
    found = ns.link_alias_by_name(rec["bridge"])
    if found is not None and found[1] == _alias(store, rec):
        return False
    if found is not None:
        raise AlreadyExists(f"interface {rec['bridge']} already exists and is not network "
                            f"{rec['name']}'s bridge of this store"
                            + (_default_network_hint(rec) or "; choose another bridge name"))
    _check_free_subnet(store, rec, subnet)
    ns.ensure_bridge(rec["bridge"], _alias(store, rec), rec["gateway"], subnet.prefixlen)
    rec["host_ns"] = hostns.self_ns()
    hostns.pin()
    try:
        nat.ensure_network_rules(nat.network_tag(ipam.store_tag(store), rec["name"]),
                                 rec["subnet"], rec["bridge"])
        if ns.ensure_ip_forward():
            rec["ip_forward_enabled_by_cocker"] = True
    except BaseException:
        _tear_down(store, rec)
        raise
    return True


def _tear_down(store, rec: dict) -> None:
    nat.delete_tagged(nat.network_tag(ipam.store_tag(store), rec["name"]))
    ns.delete_bridge(rec["bridge"], _alias(store, rec))
    _gc_host()


def _pick_subnet(store, rec: dict) -> ipaddress.IPv4Network:
    taken = [ipaddress.IPv4Network(r["subnet"]) for r in ipam.all_records(store)]
    taken.append(ipaddress.IPv4Network(ipam.load_or_default(store, DEFAULT_NETWORK)["subnet"]))
    taken += [n for n, _ in ns.host_networks()]
    for cand in ipam.AUTO_POOL.subnets(new_prefix=24):
        if not any(cand.overlaps(t) for t in taken):
            return cand
    raise Conflict(f"no free /24 left in {ipam.AUTO_POOL}; give --subnet")


# ---- networks ---------------------------------------------------------------------------

def create_network(store, name: str, subnet: str | None = None, bridge: str | None = None) -> dict:
    """Create a named network with its own bridge, or (name "bridge") configure the default
    network's subnet/bridge while it is unused."""
    ipam.validate_network_name(name)
    if name in ipam.RESERVED:
        raise UsageError(f"network name {name!r} is reserved (it is a network mode)")
    net = ipam.parse_subnet(subnet) if subnet else None
    if bridge is not None:
        ipam.validate_ifname(bridge)
    _require_root("creating a network")
    with _locked(store):
        old = ipam.load(store, name)
        if old is not None and name != DEFAULT_NETWORK:
            raise AlreadyExists(f"network {name} already exists")
        if old is not None and old["endpoints"]:
            raise Conflict(f"network {name} is in use by {', '.join(sorted(old['endpoints']))}")
        if name == DEFAULT_NETWORK:
            base = ipam.load_or_default(store, name)
            br = bridge or base["bridge"]
            rec = ipam.new_record(name, net or ipaddress.IPv4Network(base["subnet"]), br)
            rec["configured"] = True
            if old is not None and _is_ours(store, old):
                _tear_down(store, old)
        else:
            br = bridge or ipam.named_bridge(store, name)
            rec = ipam.new_record(name, ipaddress.IPv4Network("10.255.255.0/24"), br)
            if net is None:
                net = _pick_subnet(store, rec)
            rec.update(subnet=str(net), gateway=str(net.network_address + 1))
        for r in ipam.all_records(store):
            if r["name"] != name and r["bridge"] == rec["bridge"]:
                raise AlreadyExists(f"bridge {rec['bridge']} is already used by network {r['name']}")
        if name == DEFAULT_NETWORK:
            _check_free_subnet(store, rec, ipaddress.IPv4Network(rec["subnet"]))
        else:
            _bring_up(store, rec)
        try:
            ipam.save(store, rec)
        except BaseException:
            if name != DEFAULT_NETWORK:
                _tear_down(store, rec)
            raise
    return _info(store, rec)


def remove_network(store, name: str) -> None:
    """Remove a network, its bridge and its rules; refused while endpoints exist."""
    ipam.validate_network_name(name)
    _require_root("removing a network")
    with _locked(store):
        rec = ipam.load(store, name)
        if rec is None:
            raise NotFound(f"no such network: {name}")
        if rec["endpoints"]:
            raise Conflict(f"network {name} is in use by {', '.join(sorted(rec['endpoints']))}; "
                           "remove those containers first")
        with hostns.entered(rec.get("host_ns")):
            _tear_down(store, rec)
        ipam.delete(store, name)


def list_networks(store) -> list[dict]:
    recs = {r["name"]: r for r in ipam.all_records(store)}
    if DEFAULT_NETWORK not in recs:
        recs[DEFAULT_NETWORK] = ipam.load_or_default(store, DEFAULT_NETWORK)
    return [_info(store, recs[n], brief=True) for n in sorted(recs)]


def get_network(store, name: str) -> dict:
    ipam.validate_network_name(name)
    return _info(store, ipam.load_or_default(store, name))


def _info(store, rec: dict, brief: bool = False) -> dict:
    try:
        active = ns.link_exists(rec["bridge"]) and _is_ours(store, rec)
    except Exception:  # noqa: BLE001 - no netlink (unprivileged container, odd kernel): still list
        active = False
    d = {"name": rec["name"], "subnet": rec["subnet"], "gateway": rec["gateway"],
         "bridge": rec["bridge"], "default": bool(rec.get("default")), "active": active,
         "created": rec.get("created"), "endpoints": sorted(rec["endpoints"])}
    if not brief:
        ports = portmap.load_table(store)
        d["endpoints"] = {o: {"ip": e["ip"], "veth": e["veth"], "netns": e.get("netns"),
                              "ports": [str(portmap.from_json(p)) for p in
                                        ports.get(o, {}).get("ports", [])
                                        if ports[o].get("ip") == e["ip"]]}
                          for o, e in sorted(rec["endpoints"].items())}
        if rec.get("ip_forward_enabled_by_cocker"):
            d["ip_forward_enabled_by_cocker"] = True
    return d


# ---- endpoints --------------------------------------------------------------------------

def connect(store, network: str, owner: str, netns_path: str, ip: str | None = None,
            ifname: str = "eth0", aliases: Sequence[str] = ()) -> dict:
    """Attach the namespace at `netns_path` (e.g. /proc/PID/ns/net) to `network`:
    {"ip", "prefixlen", "gateway", "veth", "network", "bridge"}. The others on the network
    find it by `owner` and `aliases` (names.py)."""
    ipam.validate_network_name(network)
    ipam.validate_ifname(ifname)
    if not owner:
        raise UsageError("an endpoint needs an owner name")
    _require_root("connecting to a bridge network")
    if not os.path.exists(netns_path):
        raise NotFound(f"network namespace {netns_path} does not exist")
    with _locked(store):
        rec = ipam.load_or_default(store, network)
        ino = hostns.ns_id(netns_path)
        old = rec["endpoints"].get(owner)
        if old is not None:
            if old.get("netns_id") == ino or _alive(old):
                raise AlreadyExists(f"{owner} is already connected to network {network}")
            # Left over from an earlier life of this owner (its namespace is gone: a crash, a
            # restart): drop it, and keep its address unless another one was asked for.
            _drop_endpoint(store, rec, owner)
            ip = ip or old["ip"]
        addr = ipam.allocate(rec, owner, ip)
        created = _bring_up(store, rec)
        hostns.pin()
        prefix = ipaddress.IPv4Network(rec["subnet"]).prefixlen
        veth = ipam.veth_name(store, rec, owner)
        # Recorded before the kernel work: after a crash, cleanup_owner finds the veth.
        rec["endpoints"][owner] = {"ip": addr, "veth": veth, "ifname": ifname, "netns": netns_path,
                                   "netns_id": ino, "created": int(time.time()),
                                   "aliases": [a for a in aliases if a != owner]}
        try:
            ipam.save(store, rec)
            for _ in range(8):
                try:
                    ns.add_veth(veth, rec["bridge"], netns_path, ifname, addr, prefix,
                                rec["gateway"])
                    break
                except AlreadyExists:       # a name taken by someone else: the next one
                    veth = ipam.veth_name(store, rec, owner)
                    rec["endpoints"][owner]["veth"] = veth
                    ipam.save(store, rec)
            else:
                raise AlreadyExists(f"no free veth name for {owner}")
            _sync_names(store, rec)
        except BaseException as e:
            if not isinstance(e, AlreadyExists):    # never delete a name someone else holds
                ns.delete_link(veth)
            rec["endpoints"].pop(owner, None)
            if created and rec.get("default") and not rec["endpoints"]:
                _tear_down(store, rec)
            ipam.save(store, rec)
            raise
    return {"ip": addr, "prefixlen": prefix, "gateway": rec["gateway"], "veth": veth,
            "network": network, "bridge": rec["bridge"]}


def disconnect(store, network: str, owner: str) -> None:
    """Delete the owner's veth, drop its port mappings on this network, release its address.
    The default bridge goes away with its last endpoint. Idempotent."""
    ipam.validate_network_name(network)
    with _locked(store):
        rec = ipam.load(store, network)
        if rec is None or owner not in rec["endpoints"]:
            return
        _require_root("disconnecting from a bridge network")
        with hostns.entered(rec.get("host_ns")):
            dropped_rules = _drop_endpoint(store, rec, owner)
            if rec.get("default") and not rec["endpoints"]:
                _tear_down(store, rec)
            elif dropped_rules:
                _gc_host()
            ipam.save(store, rec)
            _sync_names(store, rec)


def _sync_names(store, rec: dict) -> None:
    """Every container on the network sees the network's endpoints in its /etc/hosts."""
    names.sync({o: store.paths.container_hosts(o) for o in rec["endpoints"]}, rec["endpoints"])


def _alive(ep: dict) -> bool:
    """Is the namespace an endpoint was made for still there (same path, same namespace)?"""
    try:
        return hostns.ns_id(ep["netns"]) == ep.get("netns_id") and ns.link_exists(ep["veth"])
    except (OSError, KeyError):
        return False


def _drop_endpoint(store, rec: dict, owner: str) -> bool:
    """Delete the owner's veth and its port mappings on this address; release the address
    (the caller saves the record). True if iptables rules were removed."""
    ep = rec["endpoints"][owner]
    table = portmap.load_table(store)
    dropped = False
    if owner in table and table[owner].get("ip") == ep["ip"]:
        # The address is about to be reused: its DNAT rules must not outlive it.
        dropped = nat.delete_tagged(nat.owner_tag(ipam.store_tag(store), owner)) > 0
        nat.forget_udp_flows([portmap.from_json(p) for p in table[owner].get("ports", [])])
        del table[owner]
        portmap.save_table(store, table)
    ns.delete_link(ep["veth"])
    del rec["endpoints"][owner]
    return dropped


# ---- port mappings ----------------------------------------------------------------------

def publish(store, owner: str, ip: str, ports: list[str]) -> None:
    """Map host ports to `ip` (the owner's address on a bridge network): reachable from other
    hosts and from this host, 127.0.0.1 included. Refuses a host port that a process on the
    host has bound or that another container has published."""
    mappings = portmap.parse_all(list(ports))
    if not mappings:
        return
    _require_root("publishing ports")
    tag = ipam.store_tag(store)
    with _locked(store):
        rec = next((r for r in ipam.all_records(store)
                    if r["endpoints"].get(owner, {}).get("ip") == ip), None)
        if rec is None:
            raise NotFound(f"{owner} has no address {ip} on any bridge network")
        table = portmap.load_table(store)
        mine = table.get(owner, {"ip": ip, "bridge": rec["bridge"], "ports": [],
                                 "host_ns": hostns.self_ns()})
        if mine["ip"] != ip:
            raise Conflict(f"{owner} already publishes ports for address {mine['ip']}")
        for m in mappings:
            for host_ip, port, proto, comment in nat.published():
                if portmap.clash(m, host_ip, port, proto):
                    who = comment.split(":p:", 1)[-1] if comment.startswith(f"ck:{tag}:p:") \
                        else "another cocker store"
                    raise AlreadyExists(f"host port {m.host_ip}:{m.host_port}/{m.proto} is "
                                        f"already published by {who}")
            portmap.check_bindable(m)
        otag = nat.owner_tag(tag, owner)
        before = [portmap.from_json(p) for p in mine["ports"]]
        try:
            nat.add_port_rules(otag, ip, rec["bridge"], mappings)
            nat.forget_udp_flows(mappings)
            mine["ports"] += [portmap.to_json(m) for m in mappings]
            table[owner] = mine
            portmap.save_table(store, table)
        except BaseException:
            # Back to exactly the mappings recorded before this call.
            nat.delete_tagged(otag)
            if before:
                nat.add_port_rules(otag, ip, rec["bridge"], before)
            raise


def unpublish(store, owner: str) -> None:
    """Remove every port mapping of `owner` (idempotent)."""
    with _locked(store):
        table = portmap.load_table(store)
        if owner in table or os.geteuid() == 0:
            _require_root("removing port mappings")
            with hostns.entered(table.get(owner, {}).get("host_ns")):
                nat.delete_tagged(nat.owner_tag(ipam.store_tag(store), owner))
                nat.forget_udp_flows([portmap.from_json(p) for p in
                                      table.get(owner, {}).get("ports", [])])
                _gc_host()
        if table.pop(owner, None) is not None:
            portmap.save_table(store, table)


def cleanup_owner(store, owner: str) -> None:
    """Remove whatever `owner` left behind (port mappings, veths, addresses) — for `rm -f`
    after a crash. Safe to call when there is nothing to clean."""
    unpublish(store, owner)
    for rec in ipam.all_records(store):
        if owner in rec["endpoints"]:
            disconnect(store, rec["name"], owner)
