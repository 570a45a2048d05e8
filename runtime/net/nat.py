"""iptables rules for bridge networks: outbound NAT, forwarding, port mappings.

All of cocker's rules live in its own chains (nat COCKER and COCKER-POSTROUTING, filter
COCKER-FORWARD), each rule tagged with a comment `ck:<store tag>:n:<network>` or
`ck:<store tag>:p:<owner>`, so removal is exact and never touches anyone else's rules. The
chains and the jumps into them are removed again when the last cocker rule goes.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from common.errors import RuntimeFailure
from common.fsutil import flock

DNAT_CHAIN = "COCKER"
POST_CHAIN = "COCKER-POSTROUTING"
FWD_CHAIN = "COCKER-FORWARD"
IN_CHAIN = "COCKER-INPUT"
CHAINS = (("nat", DNAT_CHAIN), ("nat", POST_CHAIN), ("filter", FWD_CHAIN), ("filter", IN_CHAIN))
# (table, chain, builtin chain, jump match, insert at the top?)
_JUMPS = [
    ("nat", DNAT_CHAIN, "PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL"], False),
    ("nat", DNAT_CHAIN, "OUTPUT", ["-m", "addrtype", "--dst-type", "LOCAL"], False),
    ("nat", POST_CHAIN, "POSTROUTING", [], False),
    # At the top of FORWARD so a DROP policy or rule set by other software cannot shadow us.
    ("filter", FWD_CHAIN, "FORWARD", [], True),
    ("filter", IN_CHAIN, "INPUT", [], True),
]
HOST_LOCK = "/run/cocker/net.lock"


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """Host-wide lock for objects every store shares: the chains, bridges, subnets."""
    with flock(HOST_LOCK, what="the host network setup"):
        yield


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = shutil.which("iptables") or "/usr/sbin/iptables"
    if not os.path.exists(exe):
        raise RuntimeFailure("iptables is not installed; bridge networks need it")
    # -w: wait for the xtables lock instead of failing when another tool holds it.
    p = subprocess.run([exe, "-w", "10", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeFailure(f"iptables {' '.join(args)}: {p.stderr.strip() or 'failed'}")
    return p


def _has_chain(table: str, chain: str) -> bool:
    return _iptables("-t", table, "-S", chain, check=False).returncode == 0


def _ensure_chains() -> None:
    for table, chain, builtin, match, top in _JUMPS:
        if not _has_chain(table, chain):
            _iptables("-t", table, "-N", chain, check=False)
        jump = [*match, "-j", chain]
        if _iptables("-t", table, "-C", builtin, *jump, check=False).returncode != 0:
            if top:
                _iptables("-t", table, "-I", builtin, "1", *jump)
            else:
                _iptables("-t", table, "-A", builtin, *jump)


def _rules(table: str, chain: str) -> list[list[str]]:
    p = _iptables("-t", table, "-S", chain, check=False)
    if p.returncode != 0:
        return []
    return [shlex.split(line) for line in p.stdout.splitlines() if line.startswith("-A ")]


def _comment(rule: list[str]) -> str | None:
    with contextlib.suppress(ValueError, IndexError):
        return rule[rule.index("--comment") + 1]
    return None


def _add_rule(table: str, chain: str, tag: str, *spec: str) -> None:
    # The comment goes before the target (-j ... and its options), as iptables prints it.
    i = spec.index("-j")
    rule = [*spec[:i], "-m", "comment", "--comment", tag, *spec[i:]]
    if _iptables("-t", table, "-C", chain, *rule, check=False).returncode != 0:
        _iptables("-t", table, "-A", chain, *rule)


def delete_tagged(tag: str) -> int:
    """Delete every rule in cocker's chains whose comment is exactly `tag`."""
    n = 0
    for table, chain in CHAINS:
        for rule in _rules(table, chain):
            if _comment(rule) == tag:
                _iptables("-t", table, "-D", *rule[1:], check=False)
                n += 1
    return n


def gc_chains() -> bool:
    """Remove cocker's chains and jumps once no rule is left in any of them (under host_lock).
    True if nothing of cocker's is left in iptables."""
    for table, chain in CHAINS:
        if _rules(table, chain):
            return False
    for table, chain, builtin, match, _ in _JUMPS:
        while _iptables("-t", table, "-D", builtin, *match, "-j", chain, check=False).returncode == 0:
            pass
    for table, chain in CHAINS:
        if _has_chain(table, chain):
            _iptables("-t", table, "-X", chain, check=False)
    return True


def network_tag(store_tag: str, network: str) -> str:
    return f"ck:{store_tag}:n:{network}"


def owner_tag(store_tag: str, owner: str) -> str:
    return f"ck:{store_tag}:p:{owner}"


def ensure_network_rules(tag: str, subnet: str, bridge: str) -> None:
    """Outbound NAT for the subnet (not for traffic that stays on the bridge), NAT for
    loopback-sourced traffic sent to containers (port mappings on 127.0.0.1), and
    forwarding to and from the bridge."""
    _ensure_chains()
    _add_rule("nat", POST_CHAIN, tag, "-s", subnet, "!", "-o", bridge, "-j", "MASQUERADE")
    _add_rule("nat", POST_CHAIN, tag, "-s", "127.0.0.0/8", "-o", bridge, "-j", "MASQUERADE")
    _add_rule("filter", FWD_CHAIN, tag, "-i", bridge, "-j", "ACCEPT")
    # route_localnet on the bridge (needed for mappings on 127.0.0.1) would also let a
    # container open connections to the host's loopback-only services: only replies may pass.
    _add_rule("filter", IN_CHAIN, tag, "-i", bridge, "-d", "127.0.0.0/8", "-m", "conntrack",
              "!", "--ctstate", "RELATED,ESTABLISHED", "-j", "DROP")
    _add_rule("filter", FWD_CHAIN, tag, "-o", bridge, "-m", "conntrack", "--ctstate",
              "RELATED,ESTABLISHED", "-j", "ACCEPT")


@dataclass(frozen=True)
class Mapping:
    host_ip: str          # "0.0.0.0" = every local address
    host_port: int
    ctr_port: int
    proto: str            # "tcp" | "udp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.ctr_port}/{self.proto}"


def add_port_rules(tag: str, ip: str, bridge: str, mappings: list[Mapping]) -> None:
    _ensure_chains()
    for m in mappings:
        dst = [] if m.host_ip == "0.0.0.0" else ["-d", f"{m.host_ip}/32"]
        _add_rule("nat", DNAT_CHAIN, tag, *dst, "-p", m.proto, "-m", m.proto, "--dport",
                  str(m.host_port), "-j", "DNAT", "--to-destination", f"{ip}:{m.ctr_port}")
        _add_rule("filter", FWD_CHAIN, tag, "-d", f"{ip}/32", "-o", bridge, "-p", m.proto,
                  "-m", m.proto, "--dport", str(m.ctr_port), "-j", "ACCEPT")
        # A container reaching its own published port through a host address: without
        # SNAT the packet would come back to it from itself and be dropped as a martian.
        _add_rule("nat", POST_CHAIN, tag, "-s", f"{ip}/32", "-d", f"{ip}/32", "-p", m.proto,
                  "-m", m.proto, "--dport", str(m.ctr_port), "-j", "MASQUERADE")


def published() -> list[tuple[str, int, str, str]]:
    """(host ip, host port, proto, comment) of every DNAT rule in cocker's chain — all
    stores on this host, so two stores cannot publish the same port either."""
    out = []
    for rule in _rules("nat", DNAT_CHAIN):
        with contextlib.suppress(ValueError, IndexError):
            port = int(rule[rule.index("--dport") + 1])
            proto = rule[rule.index("-p") + 1]
            host = rule[rule.index("-d") + 1].split("/")[0] if "-d" in rule else "0.0.0.0"
            out.append((host, port, proto, _comment(rule) or ""))
    return out


def forget_udp_flows(mappings: list[Mapping]) -> None:
    """Drop conntrack entries for the UDP host ports: a flow seen before the mapping existed
    (or pointing at a previous container) would otherwise bypass the new DNAT until it times
    out. Best effort: without conntrack support there is nothing to forget."""
    ports = {m.host_port for m in mappings if m.proto == "udp"}
    if not ports:
        return
    try:
        from pyroute2 import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
        with contextlib.closing(Conntrack()) as ct:
            for port in ports:
                for entry in list(ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=17, dport=port))):
                    with contextlib.suppress(Exception):
                        ct.delete(entry)
    except Exception:  # noqa: BLE001 - best effort, see above
        pass
