#!/usr/bin/env python3
"""Attaching a namespace to a bridge: cocker's `connect` + `disconnect` (pyroute2, IPAM under a
lock, persisted) against the same work done with iproute2 commands (what cocker's C original
did through system("ip ...")), interleaved in one run; medians and the ratio.

    python3 bench/network.py [--runs 30]

Needs root. Creates one network, one namespace per run, and removes everything at the end.
All traffic stays inside the namespaces it creates (none is sent at all).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, stdout=subprocess.DEVNULL)


def peer_attach(ns_name: str, bridge: str, veth: str, addr: str, prefix: int, gw: str) -> None:
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns_name)
    ip("link", "set", veth, "master", bridge, "up")
    ip("-n", ns_name, "addr", "add", f"{addr}/{prefix}", "dev", "eth0")
    ip("-n", ns_name, "link", "set", "eth0", "up")
    ip("-n", ns_name, "link", "set", "lo", "up")
    ip("-n", ns_name, "route", "add", "default", "via", gw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/network.py needs root", file=sys.stderr)
        return 2
    from registry.repo.store import Store
    from runtime.net import network as net
    store = Store(tempfile.mkdtemp(prefix="cocker-bench-net-"))
    name = f"bench{uuid.uuid4().hex[:6]}"
    info = net.create_network(store, name)
    subnet = ipaddress.ip_network(info["subnet"])
    ours, theirs = [], []
    namespaces = []
    try:
        for i in range(args.runs):
            a, b = f"ckb-a{i}-{name}", f"ckb-b{i}-{name}"
            namespaces += [a, b]
            net.new_netns(a)
            net.new_netns(b)
            t0 = time.perf_counter()
            net.connect(store, name, f"o{i}", f"/run/netns/{a}")
            net.disconnect(store, name, f"o{i}")
            ours.append(time.perf_counter() - t0)
            veth = f"vckb{i}{uuid.uuid4().hex[:6]}"
            t0 = time.perf_counter()
            peer_attach(b, info["bridge"], veth, str(subnet.network_address + 200),
                        subnet.prefixlen, info["gateway"])
            ip("link", "del", veth)
            theirs.append(time.perf_counter() - t0)
            net.delete_netns(a)
            net.delete_netns(b)
    finally:
        for n in namespaces:
            net.delete_netns(n)
        net.remove_network(store, name)
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(f"attach+detach, median of {args.runs}: cocker (pyroute2) {mo * 1000:.1f} ms, "
          f"iproute2 commands {mt * 1000:.1f} ms, ratio {mo / mt:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
