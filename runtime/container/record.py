"""A container's record and what it tells about its state; loading and listing them.

    containers/<name>/container.json   what to run: the image DIGEST pinned at create, its layer
                                       diff_ids, the effective command/env/workdir, limits, network
    containers/<name>/state.json       the last start: supervisor pid, address, exit code
    containers/<name>/upper work rootfs L/   overlay upper and work dirs, mount point, layer links
    containers/<name>/running.lock     flock'd by the live supervisor (liveness, immune to pid reuse)
    containers/<name>/lock             flock'd while a command changes the container
    containers/<name>/log              output of detached containers; attach.sock when it has a tty
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from common.errors import CockerError, NotFound, PermissionDenied, RuntimeFailure, UsageError
from common.fsutil import flock
from registry.repo.store import Store
from runtime.cgroup.group import Cgroup
from runtime.fs.rmtree import rmtree
from runtime.fs.state_file import read_json
from runtime.syscalls import process_start_time

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
HOST_NETS = ("host", "none")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# the opt-ins out of the default confinement, as the record keeps them and inspect shows them
# (a record older than them has the defaults)
SECURITY_DEFAULTS: dict[str, Any] = {
    "privileged": False, "cap_add": [], "cap_drop": [], "seccomp": "default",
    "no_new_privileges": False, "read_only": False, "devices": [], "init": False,
    "userns": False,        # --userns auto: {"mode": "auto", "uid", "gid", "size"}
}

_ADJ = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
        "nimble", "proud", "quiet", "rapid", "sharp", "tidy", "vivid", "witty", "zesty", "bold")
_NOUN = ("otter", "falcon", "panda", "lynx", "heron", "badger", "koala", "walrus", "gecko",
         "marmot", "ibis", "yak", "tapir", "quokka", "okapi", "bison", "crane", "dingo")


class Container:
    def __init__(self, store: Store, name: str, record: dict[str, Any]) -> None:
        self.store = store
        self.name = name
        self.record = record
        self.dir = store.paths.container(name)

    # record ------------------------------------------------------------------------------
    @property
    def upper_dir(self) -> str:
        return os.path.join(self.dir, "upper")

    @property
    def work_dir(self) -> str:
        return os.path.join(self.dir, "work")

    @property
    def rootfs(self) -> str:
        return os.path.join(self.dir, "rootfs")

    @property
    def layer_paths(self) -> list[str]:
        """Layer trees bottom -> top."""
        return [os.path.join(self.store.layers_dir, d.split(":")[-1])
                for d in self.record.get("layers", [])]

    @property
    def lower_dirs(self) -> list[str]:
        """Layer trees top -> bottom, as overlay's lowerdir lists them."""
        return list(reversed(self.layer_paths))

    @property
    def digest(self) -> str:
        return self.record["digest"]

    @property
    def image(self) -> str:
        return self.record["image"]

    @property
    def net(self) -> str:
        return self.record.get("net", "bridge")

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.record.get("labels") or {})

    # runtime state -------------------------------------------------------------------------
    def runtime_state(self) -> dict[str, Any]:
        return read_json(os.path.join(self.dir, "state.json"))

    def supervisor_alive(self) -> bool:
        try:
            fd = os.open(os.path.join(self.dir, "running.lock"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def state(self) -> str:
        st = self.runtime_state()
        if self.supervisor_alive():
            return "running"
        if not st:
            return "created"
        if st.get("status") == "exited":
            return "exited"
        return "dead"

    @property
    def pid(self) -> int | None:
        """The supervisor's host pid while it runs."""
        st = self.runtime_state()
        pid = st.get("pid")
        if not pid or not self.supervisor_alive():
            return None
        if st.get("pid_start") and process_start_time(pid) != st["pid_start"]:
            return None
        return int(pid)

    def workload_pid(self) -> int | None:
        """Host pid of the container's main process (the supervisor's child)."""
        sup = self.pid
        if sup is None:
            return None
        try:
            with open(f"/proc/{sup}/task/{sup}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:               # kernels without CONFIG_PROC_CHILDREN: scan for them
            kids = sorted(children_by_scan(sup), key=lambda p: start_or_max(p))
        return kids[0] if kids else None

    @property
    def ip(self) -> str | None:
        return self.runtime_state().get("ip") if self.state() == "running" else None

    @property
    def exit_code(self) -> int | None:
        st = self.runtime_state()
        return st.get("exit_code") if st.get("status") == "exited" else None

    def cgroup(self) -> Cgroup:
        return Cgroup(self.name, cpus=self.record.get("cpus"),
                              cpu_quota=self.record.get("cpu_quota"))

    def info(self) -> dict[str, Any]:
        st = self.runtime_state()
        state = self.state()
        r = self.record
        paused = False
        if state == "running":
            with contextlib.suppress(Exception):
                paused = self.cgroup().frozen()
        labels = self.labels
        out = {
            "name": self.name, "image": r.get("image"), "digest": r.get("digest"),
            "status": state, "paused": paused,
            "pid": self.pid if state == "running" else None,
            "ip": st.get("ip") if state == "running" else None,
            "net": self.net, "ports": r.get("ports", []), "hostname": r.get("hostname"),
            "command": r.get("argv"), "created": r.get("created"),
            "started_at": st.get("started_at"), "finished_at": st.get("finished_at"),
            "exit_code": st.get("exit_code") if state == "exited" else None,
            "oom_killed": bool(st.get("oom_killed")),
            "labels": labels, "tty": bool(r.get("tty")),
        }
        if "service" in labels:
            out["service"] = labels["service"]
        return out

    def inspect(self) -> dict[str, Any]:
        out = self.info()
        out["record"] = self.record
        out["state"] = self.runtime_state()
        out["dir"] = self.dir
        out["upper_dir"] = self.upper_dir
        out["workload_pid"] = self.workload_pid() if out["status"] == "running" else None
        out["user"] = self.record.get("user") or ""
        out["security"] = self.security()
        return out

    def security(self) -> dict[str, Any]:
        """The container's opt-ins (a seccomp profile shows as its file, not its text)."""
        return {k: self.record.get(k, v) for k, v in SECURITY_DEFAULTS.items()}


def children_by_scan(ppid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    data = f.read()
                if int(data[data.rindex(b")") + 2:].split()[1]) == ppid:
                    out.append(int(d))
            except (OSError, ValueError):
                continue
    return out


def start_or_max(pid: int) -> int:
    t = process_start_time(pid)
    return t if t is not None else 1 << 62


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(f"invalid container name {name!r}: letters, digits and . _ - "
                         "(first a letter or digit, at most 63)")
    return name


def new_name(store: Store) -> str:
    for _ in range(100):
        r = os.urandom(4)
        n = f"{_ADJ[r[0] % len(_ADJ)]}_{_NOUN[r[1] % len(_NOUN)]}_{r[2:].hex()}"
        if not os.path.exists(os.path.join(store.containers_dir, n)):
            return n
    raise RuntimeFailure("could not find a free container name")


def load(store: Store, name: str) -> Container:
    validate_name(name)
    path = store.paths.container_record(name)
    try:
        with open(path) as f:
            rec = json.load(f)
    except FileNotFoundError:
        raise NotFound(f"container {name} not found") from None
    except ValueError as e:
        raise RuntimeFailure(f"container {name}: unreadable record ({e})") from None
    return Container(store, name, rec)


def list_containers(store: Store, all: bool = True) -> list[Container]:
    sweep_removed(store)
    out = []
    with contextlib.suppress(FileNotFoundError):
        for n in sorted(os.listdir(store.containers_dir)):
            if n.startswith(".") or not NAME_RE.match(n):
                continue
            try:
                c = load(store, n)
            except CockerError:
                continue
            if all or c.state() == "running":
                out.append(c)
    return out


def require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionDenied("containers need root (namespaces, mounts and cgroups)")


@contextlib.contextmanager
def locked(c_dir: str, timeout: float | None = None) -> Iterator[None]:
    with flock(os.path.join(c_dir, "lock"), timeout=timeout, what="the container"):
        yield


def sweep_removed(store: Store, grace: float = 600.0) -> None:
    """Directories of removals that died halfway (.rm-*), after a grace period."""
    now = time.time()
    with contextlib.suppress(OSError):
        for e in os.scandir(store.containers_dir):
            if e.name.startswith(".rm-") and now - e.stat(follow_symlinks=False).st_mtime > grace:
                rmtree(e.path)
