"""Network test support: unique names, namespaces that are always removed, commands run inside
a namespace, free ports, and a check that nothing of a store is left on the host.

Usage:
    from tests.support.net import netenv   # noqa: F401  (fixture)

    def test_x(netenv):
        a = netenv.netns()                        # a fresh named netns (deleted after the test)
        netenv.run_in(a, "busybox", "ping", ...)  # ip netns exec

The fixture also gives the store a unique default bridge and subnet (COCKER_BRIDGE,
COCKER_BRIDGE_SUBNET), so tests running in parallel never share `cocker0`.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import subprocess
import uuid

import pytest

from registry.repo.store import Store


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 10000}{uuid.uuid4().hex[:5]}"


def free_port(proto: str = "tcp") -> int:
    """A port that is free for TCP and UDP on every address (the kernel's pick)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def unique_subnet() -> str:
    """A random private /24 outside cocker's own defaults (10.88/16, the 10.89/16 pool) and
    not routed on this host, so parallel test runs do not collide."""
    from runtime.net.netns import host_networks
    routed = [n for n, _ in host_networks()]
    for _ in range(200):
        cand = ipaddress.ip_network(f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24")
        if not any(cand.overlaps(r) for r in routed):
            return str(cand)
    raise RuntimeError("no free test subnet")


def run_in(ns_name: str, *argv: str, timeout: float = 20, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns_name, *argv], capture_output=True,
                          text=True, timeout=timeout, **kw)


def links() -> set[str]:
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    return {line.split()[0].split("@")[0] for line in out.splitlines() if line.strip()}


def iptables_dump() -> str:
    return "".join(subprocess.run(["iptables", "-w", "-t", t, "-S"], capture_output=True,
                                  text=True).stdout for t in ("nat", "filter"))


def netns_list() -> list[str]:
    try:
        return os.listdir("/run/netns")
    except FileNotFoundError:
        return []


class NetEnv:
    """Per-test network state: a store whose default bridge and subnet are unique, the
    namespaces and processes the test made, and a leftover check at the end."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.bridge = unique("ckt")[:15]
        self.subnet = unique_subnet()
        self.veths: set[str] = set()

    def netns(self) -> str:
        """A new named namespace (lo up); returns its name, path is /run/netns/NAME."""
        from runtime.net.network import new_netns
        name = unique("ckt-ns")
        self.namespaces.append(name)
        new_netns(name)
        return name

    @staticmethod
    def path(name: str) -> str:
        return f"/run/netns/{name}"

    def connect(self, network: str, owner: str, ns_name: str, ip: str | None = None) -> dict:
        from runtime.net.network import connect
        ep = connect(self.store, network, owner, self.path(ns_name), ip=ip)
        self.veths.add(ep["veth"])
        return ep

    def run_in(self, ns_name: str, *argv: str, **kw) -> subprocess.CompletedProcess:
        return run_in(ns_name, *argv, **kw)

    def spawn(self, ns_name: str, *argv: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(["ip", "netns", "exec", ns_name, *argv], **kw)
        self.procs.append(p)
        return p

    def tag(self) -> str:
        from runtime.net.ipam import store_tag
        return store_tag(self.store)

    def rules(self) -> list[str]:
        """This store's iptables rules (they carry its tag)."""
        return [rule for rule in iptables_dump().splitlines() if f"ck:{self.tag()}:" in rule]

    def leftovers(self) -> list[str]:
        """What of this test is still on the host: rules, bridges, veths, namespaces."""
        from runtime.net import ipam
        out = self.rules()
        names = links()
        bridges = {r["bridge"] for r in ipam.all_records(self.store)} | {self.bridge}
        out += [f"link {n}" for n in sorted((self.veths | bridges) & names)]
        out += [f"netns {n}" for n in self.namespaces if n in netns_list()]
        return out

    def cleanup(self) -> None:
        from runtime.net import ipam, network, portmap
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        owners = {o for r in ipam.all_records(self.store) for o in r["endpoints"]}
        owners |= set(portmap.load_table(self.store))
        for o in sorted(owners):
            network.cleanup_owner(self.store, o)
        for rec in ipam.all_records(self.store):
            if not rec.get("default"):
                network.remove_network(self.store, rec["name"])
        for n in self.namespaces:
            network.delete_netns(n)


@pytest.fixture
def netenv(store, monkeypatch):
    if os.geteuid() != 0:
        pytest.fail("needs root: the suite runs as root (README), as CI does")
    env = NetEnv(store)
    monkeypatch.setenv("COCKER_BRIDGE", env.bridge)
    monkeypatch.setenv("COCKER_BRIDGE_SUBNET", env.subnet)
    try:
        yield env
    finally:
        env.cleanup()
    left = env.leftovers()
    assert not left, f"left behind: {left}"
