"""The user a container's process runs as: `-u uid[:gid]` or `-u name[:group]`, resolved from the
image's own /etc/passwd and /etc/group read as text.

Never through the host's NSS (python's pwd/grp): inside a rootfs, glibc would load the image's
libnss_*.so into a root process (CVE-2019-14271). The files are read from the current root, so
callers resolve after pivot_root/chroot, where an absolute symlink cannot lead to the host's files.
"""

import os
from typing import NamedTuple

from common.errors import UsageError

MAX_DB_BYTES = 4 << 20        # a passwd or group file larger than this is not read further


class ExecUser(NamedTuple):      # a NamedTuple: defined on every start, cheaper than a dataclass
    uid: int
    gid: int
    groups: tuple[int, ...]     # supplementary groups, the primary one included
    home: str


def _read_db(path: str) -> list[list[str]]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        data = os.read(fd, MAX_DB_BYTES)
    except OSError:
        return []
    finally:
        os.close(fd)
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def _id(text: str, what: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32 - 1:
        raise UsageError(f"{what} {text}: out of range")
    return value


def resolve(spec: str, passwd: list[list[str]], group: list[list[str]]) -> ExecUser:
    """`spec` against the rows of passwd and group; UsageError for a name the image lacks."""
    name, sep, grp = spec.partition(":")
    if not name or (sep and not grp):
        raise UsageError(f"--user {spec!r}: expected uid[:gid] or name[:group]")
    entry = None
    for row in passwd:
        if len(row) >= 7 and (row[0] == name or (name.isdigit() and row[2] == name)):
            entry = row
            break
    if entry is not None:
        uid, gid, home, login = _id(entry[2], "uid"), _id(entry[3], "gid"), entry[5], entry[0]
    elif name.isdigit():
        # docker's rule: a numeric uid need not exist in the image; it runs with gid 0
        uid, gid, home, login = _id(name, "uid"), 0, "/", None
    else:
        raise UsageError(f"user {name!r} not found in the image's /etc/passwd")
    if grp:
        match = [r for r in group if len(r) >= 3 and (r[0] == grp or (grp.isdigit() and r[2] == grp))]
        if match:
            gid = _id(match[0][2], "gid")
        elif grp.isdigit():
            gid = _id(grp, "gid")
        else:
            raise UsageError(f"group {grp!r} not found in the image's /etc/group")
    extra = [gid]
    if login is not None:
        for row in group:
            if len(row) >= 4 and login in row[3].split(",") and row[2].isdigit():
                g = _id(row[2], "gid")
                if g not in extra:
                    extra.append(g)
    return ExecUser(uid, gid, tuple(extra), home or "/")


def resolve_in_root(spec: str) -> ExecUser:
    """`spec` against the /etc/passwd and /etc/group of the current root; '' is root."""
    return resolve(spec or "0", _read_db("/etc/passwd"), _read_db("/etc/group"))


def switch_to(user: ExecUser) -> None:
    """Take the user's ids. From root to another uid the kernel clears the permitted and
    effective capability sets, so a non-root user keeps none."""
    os.setgroups(list(user.groups))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
