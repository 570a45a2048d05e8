"""Port mapping specs `[HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]`: parsing, host-port checks and the
store's table of published ports (networks/ports.json, changed under the network lock)."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import socket

from common.errors import AlreadyExists, CockerError, UsageError
from runtime.net.ipam import write_state
from runtime.net.nat import Mapping


def parse(spec: str) -> Mapping:
    text = spec.strip()
    proto = "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
        proto = proto.lower()
        if proto not in ("tcp", "udp"):
            raise UsageError(f"invalid port mapping {spec!r}: protocol must be tcp or udp")
    parts = text.rsplit(":", 2)
    if len(parts) == 2:
        host_ip, host_port, ctr_port = "0.0.0.0", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host_port, ctr_port = parts
        try:
            addr = ipaddress.ip_address(host_ip)
        except ValueError:
            raise UsageError(f"invalid port mapping {spec!r}: {host_ip!r} is not an IPv4 address") from None
        if addr.version != 4:
            raise UsageError(f"invalid port mapping {spec!r}: only IPv4 host addresses are supported")
    else:
        raise UsageError(f"invalid port mapping {spec!r}: expected [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]")
    return Mapping(host_ip, _port(host_port, spec), _port(ctr_port, spec), proto)


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"invalid port mapping {spec!r}: {text!r} is not a port number (1-65535)")
    return int(text)


def parse_all(specs: list[str]) -> list[Mapping]:
    out: list[Mapping] = []
    for s in specs:
        m = parse(s)
        for o in out:
            if clash(m, o.host_ip, o.host_port, o.proto):
                raise UsageError(f"port mappings {o} and {m} use the same host port")
        out.append(m)
    return out


def clash(m: Mapping, host_ip: str, port: int, proto: str) -> bool:
    """Same port and protocol on the same address (0.0.0.0 meaning every address)."""
    return (m.host_port == port and m.proto == proto
            and (m.host_ip == host_ip or "0.0.0.0" in (m.host_ip, host_ip)))


def check_bindable(m: Mapping) -> None:
    """Refuse a host port some process on the host already uses (we try to bind it)."""
    kind = socket.SOCK_STREAM if m.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if m.proto == "tcp":
            # Not blocked by connections lingering in TIME_WAIT, still blocked by a listener.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((m.host_ip, m.host_port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise AlreadyExists(f"host port {m.host_ip}:{m.host_port}/{m.proto} is already "
                                    "in use on this host") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"{m.host_ip} is not an address of this host") from None
            raise CockerError(f"cannot use host port {m.host_ip}:{m.host_port}/{m.proto}: "
                              f"{e.strerror}") from None


def table_path(store) -> str:
    return store.paths.port_map


def load_table(store) -> dict:
    """owner -> {"ip", "bridge", "ports": [ {host_ip, host_port, ctr_port, proto} ]}"""
    with contextlib.suppress(FileNotFoundError):
        with open(table_path(store)) as f:
            try:
                return json.load(f)
            except ValueError as e:
                raise CockerError(f"unreadable port table {table_path(store)}: {e}") from None
    return {}


def save_table(store, table: dict) -> None:
    write_state(table_path(store), table)


def to_json(m: Mapping) -> dict:
    return {"host_ip": m.host_ip, "host_port": m.host_port, "ctr_port": m.ctr_port, "proto": m.proto}


def from_json(d: dict) -> Mapping:
    return Mapping(d["host_ip"], int(d["host_port"]), int(d["ctr_port"]), d["proto"])
