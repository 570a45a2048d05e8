"""Linux capabilities of a container's processes: docker's default set, names as docker spells
them, --cap-add/--cap-drop arithmetic, and applying a set in the forked child before exec.

Self-contained (ctypes only): it runs between fork and exec, after pivot_root, where nothing
more can be imported from the host's python.
"""

from __future__ import annotations

import ctypes
import os

from common.errors import UsageError

_libc = ctypes.CDLL(None, use_errno=True)

# capability(7) numbers; the names are the kernel's without the CAP_ prefix
NUMBERS: dict[str, int] = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}
NAMES: dict[int, str] = {n: name for name, n in NUMBERS.items()}

# docker's defaults (moby oci/caps/defaults.go): CapEff 00000000a80425fb for root
DEFAULT: frozenset[str] = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
})

_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_SET_KEEPCAPS = 8
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def last_cap() -> int:
    """The highest capability this kernel knows (newer kernels may know more than NUMBERS)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(NAMES)


def known() -> frozenset[str]:
    """Every capability name this kernel has: what `ALL` and --privileged mean here."""
    top = last_cap()
    return frozenset(name for name, n in NUMBERS.items() if n <= top)


def parse_name(text: str) -> str:
    """`NET_ADMIN`, `net_admin`, `CAP_NET_ADMIN` -> `NET_ADMIN`; `ALL` stays `ALL`."""
    name = text.strip().upper()
    if name.startswith("CAP_"):
        name = name[4:]
    if name != "ALL" and name not in NUMBERS:
        raise UsageError(f"unknown capability: {text!r}")
    return name


def resolve(add: list[str] | tuple[str, ...] = (), drop: list[str] | tuple[str, ...] = (), *,
            privileged: bool = False) -> frozenset[str]:
    """The container's set after --cap-add/--cap-drop, by docker's rules: `--cap-drop ALL`
    starts from nothing, `--cap-add ALL` from everything (and wins over `--cap-drop ALL`), an
    added name wins over a dropped one; --privileged is everything."""
    everything = known()
    if privileged:
        return everything
    adds = {parse_name(c) for c in add}
    drops = {parse_name(c) for c in drop}
    if "ALL" in adds:
        base = set(everything) - drops
    elif "ALL" in drops:
        base = set(adds)
    else:
        base = (set(DEFAULT) - drops) | adds
    return frozenset(base & everything)


def to_mask(caps: frozenset[str] | set[str]) -> int:
    mask = 0
    for name in caps:
        mask |= 1 << NUMBERS[name]
    return mask


def from_mask(mask: int) -> frozenset[str]:
    return frozenset(name for n, name in NAMES.items() if mask >> n & 1)


def format_mask(mask: int) -> str:
    """As /proc/PID/status shows it (CapEff: 00000000a80425fb)."""
    return f"{mask:016x}"


# in the child, between fork and exec ------------------------------------------------------
class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    ret = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                      ctypes.c_ulong(0), ctypes.c_ulong(0))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl({option}): {os.strerror(e)}")
    return int(ret)


def drop_bounding(keep: int) -> None:
    """Drop from the bounding set every capability not in `keep`: no later execve (setuid
    binary, file capabilities) can gain one back. Needs CAP_SETPCAP, so it comes first."""
    for n in range(last_cap() + 1):
        if not keep >> n & 1 and _prctl(_PR_CAPBSET_READ, n) == 1:
            _prctl(_PR_CAPBSET_DROP, n)


def set_keepcaps(on: bool) -> None:
    """Off (the default) means setuid from root to another user clears the permitted and
    effective sets: the way a non-root container user ends with no capability at all."""
    _prctl(_PR_SET_KEEPCAPS, 1 if on else 0)


def capget() -> tuple[int, int]:
    """The calling thread's (effective, permitted) sets."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc.capget(ctypes.byref(header), data) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"capget: {os.strerror(e)}")
    return (data[0].effective | data[1].effective << 32,
            data[0].permitted | data[1].permitted << 32)


def raise_effective() -> None:
    """Make every permitted capability effective again (after setfsuid dropped the fs ones)."""
    permitted = capget()[1]
    capset(permitted, permitted)


def capset(effective: int, permitted: int) -> None:
    """Set the effective and permitted sets; the inheritable set is always emptied
    (CVE-2022-24769: a non-empty one let file-inheritable caps be gained at execve), and so is
    the ambient set."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in (0, 1):
        data[i].effective = effective >> (32 * i) & 0xFFFFFFFF
        data[i].permitted = permitted >> (32 * i) & 0xFFFFFFFF
        data[i].inheritable = 0
    if _libc.capset(ctypes.byref(header), data) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"capset: {os.strerror(e)}")
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)


def switch_user(uid: int, gid: int, groups: list[int]) -> None:
    """setgroups/setgid/setuid with keep-caps off: a non-root `uid` loses every capability."""
    set_keepcaps(False)
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def apply(caps: int, uid: int = 0, gid: int = 0, groups: list[int] | None = None) -> None:
    """Confine the calling process to `caps` (a mask) as user uid:gid: the bounding set is cut
    to `caps`, then root keeps `caps` as effective and permitted, and any other user keeps
    nothing (docker: CapEff 0 for a non-root user). Inheritable and ambient end empty."""
    # what the caller does not hold itself (a host root without CAP_SYS_RESOURCE, say) it
    # cannot hand on: --privileged means every capability there is to give
    caps &= capget()[1]
    drop_bounding(caps)
    switch_user(uid, gid, list(groups or []))
    keep = caps if uid == 0 else 0
    capset(keep, keep)
