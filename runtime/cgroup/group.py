"""cgroups for containers, v1 (one hierarchy per controller) and v2 (unified).

Every container gets `cocker/<name>` (in each v1 controller we use, or once under v2) so its
processes can be limited, frozen and killed as a group. The limits come from the container record
and are written at every start; the group is removed when the container stops.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time

from common.errors import RuntimeFailure, UsageError

ROOT = "/sys/fs/cgroup"
PARENT = "cocker"
V1_CONTROLLERS = ("cpuset", "cpu", "memory", "pids", "freezer", "devices")
# v1 groups every container gets: devices (which nodes it may open), memory (usage, OOM
# detection), pids (the count, and the process list kill_all reads) and freezer (pause,
# commit --pause). cpuset and cpu only limit;
# each costs a mkdir, an attach and an rmdir at every start (cpuset also copying its parent's
# cpus and mems), so a container gets them only with --cpus / --cpu-quota. Without them its
# processes share the cpu and cpuset groups of whoever started it.
V1_ALWAYS = ("memory", "pids", "freezer", "devices")
PERIOD_US = 100_000

_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
           "g": 1 << 30, "gb": 1 << 30, "t": 1 << 40, "tb": 1 << 40}


def is_v2() -> bool:
    return os.path.exists(os.path.join(ROOT, "cgroup.controllers"))


def parse_memory(text: str) -> int:
    """'100m', '1G', '512k', '1048576' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]{0,2})\s*", str(text))
    if not m or m.group(2).lower() not in _SUFFIX:
        raise UsageError(f"--memory {text!r}: expected a size like 64m, 1g or 1048576")
    n = int(float(m.group(1)) * _SUFFIX[m.group(2).lower()])
    if n < 4 << 20:
        raise UsageError(f"--memory {text!r}: the minimum is 4m")
    return n


def parse_cpus(text: str) -> str:
    """'0', '0,1', '0-1' -> a cpuset list, checked against the CPUs this machine has."""
    text = str(text).strip()
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", text):
        raise UsageError(f"--cpus {text!r}: expected a CPU list like 0 or 0,1 or 0-1")
    avail = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        for c in range(int(lo), int(hi or lo) + 1):
            if avail and c not in avail:
                raise UsageError(f"--cpus {text!r}: CPU {c} does not exist here "
                                 f"(available: {','.join(map(str, sorted(avail)))})")
    return text


def validate_limits(cpus: str | None, cpu_quota: int | None, memory: str | None,
                    pids_limit: int | None) -> None:
    if cpus is not None:
        parse_cpus(cpus)
    if cpu_quota is not None and not (1 <= int(cpu_quota) <= 100 * (os.cpu_count() or 1)):
        raise UsageError(f"--cpu-quota {cpu_quota}: expected a percentage of one CPU, "
                         f"1..{100 * (os.cpu_count() or 1)}")
    if memory is not None:
        parse_memory(memory)
    if pids_limit is not None and int(pids_limit) < 1:
        raise UsageError(f"--pids-limit {pids_limit}: must be at least 1")


class Cgroup:
    """The cgroup(s) of one container."""

    def __init__(self, name: str, *, cpus: str | None = None,
                 cpu_quota: int | None = None) -> None:
        """The container's groups, for its limits (the record's cpus and cpu_quota)."""
        self.name = name
        self.v2 = is_v2()
        if self.v2:
            self.dirs = {"unified": os.path.join(ROOT, PARENT, name)}
            self._all = dict(self.dirs)
        else:
            want = set(V1_ALWAYS)
            if cpus is not None:
                want.add("cpuset")
            if cpu_quota is not None:
                want.add("cpu")
            # every controller's group, for the teardown: whatever an older start made goes too
            self._all = {c: os.path.join(ROOT, c, PARENT, name) for c in V1_CONTROLLERS
                         if os.path.isdir(os.path.join(ROOT, c))}
            self.dirs = {c: d for c, d in self._all.items() if c in want}

    # setup -----------------------------------------------------------------------------
    def create(self, *, cpus: str | None = None, cpu_quota: int | None = None,
               memory: str | None = None, pids_limit: int | None = None) -> None:
        try:
            if self.v2:
                self._create_v2(cpus, cpu_quota, memory, pids_limit)
            else:
                self._create_v1(cpus, cpu_quota, memory, pids_limit)
        except OSError as e:
            self.remove()
            raise RuntimeFailure(f"cgroup {PARENT}/{self.name}: {e.strerror or e}"
                                 + (f" ({e.filename})" if e.filename else "")) from e

    def _create_v1(self, cpus, cpu_quota, memory, pids_limit) -> None:
        for ctrl, d in self.dirs.items():
            parent = os.path.dirname(d)
            if not os.path.isdir(parent):
                os.makedirs(parent, exist_ok=True)
                if ctrl == "cpuset":
                    _inherit_cpuset(parent)
            os.makedirs(d, exist_ok=True)
        if "cpuset" in self.dirs:
            _inherit_cpuset(self.dirs["cpuset"])
            if cpus is not None:
                _write(self.dirs["cpuset"], "cpuset.cpus", parse_cpus(cpus))
        if cpu_quota is not None and "cpu" in self.dirs:
            _write(self.dirs["cpu"], "cpu.cfs_period_us", str(PERIOD_US))
            _write(self.dirs["cpu"], "cpu.cfs_quota_us", str(int(cpu_quota) * PERIOD_US // 100))
        if memory is not None and "memory" in self.dirs:
            n = str(parse_memory(memory))
            d = self.dirs["memory"]
            # memsw must stay >= limit: raise memsw first when growing, the limit first otherwise
            with contextlib.suppress(OSError):
                _write(d, "memory.memsw.limit_in_bytes", "-1")
            _write(d, "memory.limit_in_bytes", n)
            if os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
                _write(d, "memory.memsw.limit_in_bytes", n)   # no escape into swap
        if pids_limit is not None and "pids" in self.dirs:
            _write(self.dirs["pids"], "pids.max", str(int(pids_limit)))

    def _create_v2(self, cpus, cpu_quota, memory, pids_limit) -> None:
        d = self.dirs["unified"]
        parent = os.path.dirname(d)
        os.makedirs(parent, exist_ok=True)
        avail = set(_read(ROOT, "cgroup.controllers").split())
        want = [c for c in ("cpuset", "cpu", "memory", "pids") if c in avail]
        for p in (ROOT, parent):
            with contextlib.suppress(OSError):
                _write(p, "cgroup.subtree_control", " ".join("+" + c for c in want))
        os.makedirs(d, exist_ok=True)
        if cpus is not None:
            _write(d, "cpuset.cpus", parse_cpus(cpus))
        if cpu_quota is not None:
            _write(d, "cpu.max", f"{int(cpu_quota) * PERIOD_US // 100} {PERIOD_US}")
        if memory is not None:
            _write(d, "memory.max", str(parse_memory(memory)))
            with contextlib.suppress(OSError):
                _write(d, "memory.swap.max", "0")
        if pids_limit is not None:
            _write(d, "pids.max", str(int(pids_limit)))

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self._all.values())

    def join(self, pid: int = 0) -> None:
        """Move `pid` (0: the caller) into the container's cgroup(s)."""
        for d in self.dirs.values():
            _write(d, "cgroup.procs", str(pid or os.getpid()))

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError):
                out.update(int(x) for x in _read(d, "cgroup.procs").split())
        return sorted(out)

    # freezing -------------------------------------------------------------------------
    def freeze(self) -> None:
        self._set_frozen(True)

    def thaw(self) -> None:
        self._set_frozen(False)

    def frozen(self) -> bool:
        try:
            if self.v2:
                return _read(self.dirs["unified"], "cgroup.freeze").strip() == "1"
            if "freezer" in self.dirs:
                return _read(self.dirs["freezer"], "freezer.state").strip() != "THAWED"
        except OSError:
            pass
        return False

    def _set_frozen(self, on: bool) -> None:
        if self.v2:
            _write(self.dirs["unified"], "cgroup.freeze", "1" if on else "0")
            want, key, f = ("1" if on else "0"), "frozen", "cgroup.events"
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                for line in _read(self.dirs["unified"], f).splitlines():
                    k, _, v = line.partition(" ")
                    if k == key and v.strip() == want:
                        return
                time.sleep(0.01)
            raise RuntimeFailure(f"cgroup {self.name}: could not {'freeze' if on else 'thaw'}")
        d = self.dirs.get("freezer")
        if d is None:
            raise RuntimeFailure("the freezer cgroup controller is not available")
        state = "FROZEN" if on else "THAWED"
        _write(d, "freezer.state", state)
        deadline = time.monotonic() + 5
        while _read(d, "freezer.state").strip() != state:
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"cgroup {self.name}: could not reach {state}")
            time.sleep(0.01)

    # stats ---------------------------------------------------------------------------
    def oom_killed(self) -> bool:
        try:
            if self.v2:
                for line in _read(self.dirs["unified"], "memory.events").splitlines():
                    k, _, v = line.partition(" ")
                    if k == "oom_kill" and int(v) > 0:
                        return True
                return False
            for line in _read(self.dirs["memory"], "memory.oom_control").splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill" and int(v) > 0:
                    return True
        except (OSError, KeyError, ValueError):
            pass
        return False

    # teardown ------------------------------------------------------------------------
    def kill_all(self, sig: int = 9) -> None:
        with contextlib.suppress(OSError):
            if self.frozen():
                self.thaw()
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def remove(self, timeout: float = 5.0) -> None:
        """rmdir the group(s); processes still in them are killed first."""
        deadline = time.monotonic() + timeout
        for d in self._all.values():
            while os.path.isdir(d):
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise RuntimeFailure(f"cannot remove cgroup {d}: {e.strerror}") from e
                    self.kill_all()
                    time.sleep(0.01)


def _inherit_cpuset(d: str) -> None:
    """A v1 cpuset group starts empty; copy the parent's cpus and mems so tasks may join."""
    parent = os.path.dirname(d)
    for f in ("cpuset.cpus", "cpuset.mems"):
        if not _read(d, f).strip():
            _write(d, f, _read(parent, f).strip())


def _read(d: str, f: str) -> str:
    with open(os.path.join(d, f)) as fh:
        return fh.read()


def _write(d: str, f: str, value: str) -> None:
    fd = os.open(os.path.join(d, f), os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise OSError(e.errno, e.strerror, os.path.join(d, f)) from None
    finally:
        os.close(fd)
