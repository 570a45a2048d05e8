"""A container's opt-ins out of the default confinement, as docker spells them: checked at
create, recorded with the container, shown by inspect, turned into the process's Confinement
and devices at each start (and each exec)."""

from __future__ import annotations

import os
import stat
from typing import Any

from common.errors import NotFound, UsageError
from common.home import Home
from runtime.process import capabilities, confinement, seccomp
from runtime.process.confinement import Confinement
from runtime.process.plan import Device

# the --init binaries, first found wins: static ones first, as the image may have no libc
INIT_BINARIES = ("tini-static", "catatonit", "tini")


def parse_security_opts(opts: list[str]) -> dict[str, Any]:
    """`--security-opt` values -> {"seccomp": "default"|"unconfined"|FILE,
    "no_new_privileges": bool}."""
    out: dict[str, Any] = {"seccomp": "default", "no_new_privileges": False}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep:
            key, sep, value = opt.partition(":")      # docker's older spelling
        key = key.strip()
        if key == "no-new-privileges":
            if value.lower() in ("", "true", "1"):
                out["no_new_privileges"] = True
            elif value.lower() in ("false", "0"):
                out["no_new_privileges"] = False
            else:
                raise UsageError(f"--security-opt {opt!r}: no-new-privileges takes true or false")
        elif key == "seccomp" and value:
            out["seccomp"] = value
        else:
            raise UsageError(f"--security-opt {opt!r}: cocker knows seccomp=unconfined|FILE.json "
                             "and no-new-privileges")
    return out


def parse_device(spec: str) -> Device:
    """`HOST[:CTR[:PERMS]]` -> the device, refused unless HOST is a device node."""
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise UsageError(f"--device {spec!r}: expected HOST[:CONTAINER]")
    host = parts[0]
    ctr = parts[1] if len(parts) > 1 and parts[1] else host
    if len(parts) == 3 and parts[2] and set(parts[2]) - set("rwm"):
        raise UsageError(f"--device {spec!r}: permissions are letters of rwm")
    if not os.path.isabs(host) or not os.path.isabs(ctr):
        raise UsageError(f"--device {spec!r}: both paths must be absolute")
    try:
        st = os.stat(host)
    except FileNotFoundError:
        raise NotFound(f"--device {spec!r}: {host} does not exist") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise UsageError(f"--device {spec!r}: {host} is not a device node")
    ctr = os.path.normpath(ctr)
    if not ctr.startswith("/dev/") or ctr in ("/dev/pts", "/dev/shm", "/dev/mqueue") \
            or ctr.startswith(("/dev/pts/", "/dev/shm/", "/dev/mqueue/")):
        raise UsageError(f"--device {spec!r}: the container path must be a free name under /dev")
    return Device(host, ctr, kind, os.major(st.st_rdev), os.minor(st.st_rdev))


def record_fields(*, privileged: bool, cap_add: list[str], cap_drop: list[str],
                  security_opt: list[str], read_only: bool, devices: list[str],
                  init: bool) -> dict[str, Any]:
    """The opt-ins as the record keeps them; every value checked (UsageError otherwise). A
    seccomp profile file is read now: the container keeps the text it was created with."""
    for name in (*cap_add, *cap_drop):
        capabilities.parse_name(name)
    opts = parse_security_opts(security_opt)
    profile = None
    if opts["seccomp"] not in ("default", seccomp.UNCONFINED):
        profile = seccomp.read_profile_file(opts["seccomp"])
    for d in devices:
        parse_device(d)
    if init:
        init_binary()
    return {
        "privileged": bool(privileged), "cap_add": list(cap_add), "cap_drop": list(cap_drop),
        "security_opt": list(security_opt), "seccomp": opts["seccomp"],
        "seccomp_profile": profile, "no_new_privileges": opts["no_new_privileges"],
        "read_only": bool(read_only), "devices": list(devices), "init": bool(init),
    }


def confinement_for(home: Home, record: dict[str, Any]) -> Confinement:
    """What the record's processes run under (the same for PID 1 and every exec)."""
    mode = record.get("seccomp") or "default"
    profile = (seccomp.UNCONFINED if mode == seccomp.UNCONFINED
               else record.get("seccomp_profile") if mode != "default" else None)
    return confinement.prepare(home, cap_add=list(record.get("cap_add") or []),
                               cap_drop=list(record.get("cap_drop") or []),
                               privileged=bool(record.get("privileged")),
                               seccomp_profile=profile,
                               no_new_privs=bool(record.get("no_new_privileges")))


def devices_for(record: dict[str, Any]) -> list[Device]:
    return [parse_device(d) for d in record.get("devices") or []]


def init_binary() -> str:
    """The host's tini or catatonit (scripts/install.sh installs both)."""
    import shutil  # --init only: shutil pulls in bz2/lzma, a cost on every start
    for name in INIT_BINARIES:
        path = shutil.which(name)
        if path:
            return os.path.realpath(path)
    raise NotFound("--init needs tini or catatonit on the host (scripts/install.sh installs them)")


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The opt-ins for inspect; a recorded seccomp profile shows as its source, not its text."""
    return {k: record.get(k) for k in ("privileged", "cap_add", "cap_drop", "seccomp",
                                        "no_new_privileges", "read_only", "devices", "init")}
