"""A service's record on disk: `store.home/services/<name>/service.json`, guarded by flock.

Everything a service is lives in that directory (its record, its nginx prefix, its monitor's pid
and lock), so any cocker process — a command, the daemon after a restart, the monitor — finds
the service as it is. Every change happens under the service's lock; the record is replaced
atomically so a reader never sees half of it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from common.errors import LockBusy, NotFound, UsageError
from common.fsutil import LOCK_TIMEOUT, atomic_write

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
RESTART_POLICIES = ("always", "on-failure", "no")
DEFAULT_PORT = 8080  # brocker's replicas listened on 8080; cocker lets you choose


@dataclass
class ServiceSpec:
    """What the user asked for; the template of every replica."""
    name: str
    image: str | None = None
    replicas: int = 1
    port: int = DEFAULT_PORT              # the port replicas listen on (nginx's upstream port)
    publish: list[str] = field(default_factory=list)   # [HOSTIP:]HOSTPORT (to nginx's port 80)
    subnet: str | None = None
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    workdir: str | None = None
    cpus: str | None = None
    cpu_quota: int | None = None
    memory: str | None = None
    pids_limit: int | None = None
    restart: str = "always"

    def validate(self) -> ServiceSpec:
        validate_name(self.name)
        if not isinstance(self.replicas, int) or isinstance(self.replicas, bool) or self.replicas < 0:
            raise UsageError(f"replicas must be a whole number >= 0, not {self.replicas!r}")
        if self.replicas > 0 and not self.image:
            raise UsageError("a service with replicas needs an image (--image REF)")
        validate_port(self.port, "port")
        if self.restart not in RESTART_POLICIES:
            raise UsageError(f"restart policy must be one of {', '.join(RESTART_POLICIES)}, "
                             f"not {self.restart!r}")
        return self


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(f"invalid service name {name!r}: use 1-40 of a-z 0-9 _ . - "
                         "starting with a letter or digit")
    return name


def validate_port(port: Any, what: str) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise UsageError(f"{what} must be a port number 1-65535, not {port!r}")
    return port


def services_dir(store) -> str:
    return store.paths.services


def service_dir(store, name: str) -> str:
    return os.path.join(services_dir(store), validate_name(name))


def record_path(store, name: str) -> str:
    return os.path.join(service_dir(store, name), "service.json")


def try_lock(fd: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise


@contextlib.contextmanager
def process_lock(path: str, timeout: float | None = None, what: str = "a service") -> Iterator[int]:
    """An exclusive POSIX record lock (lockf) on `path`.

    Not flock: a flock belongs to the open file, so every process forked while it is held
    (a container's supervisor is forked, not exec'd) would hold it too, for the container's
    whole life. A POSIX lock belongs to the process and is never inherited."""
    timeout = LOCK_TIMEOUT if timeout is None else timeout
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not try_lock(fd):
            if time.monotonic() >= deadline:
                raise LockBusy(f"{what} is locked by another cocker process ({path}); "
                               "try again when it has finished")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def global_lock(store, timeout: float | None = None) -> Iterator[None]:
    """Held while a service is created or removed: names are checked under it."""
    with process_lock(os.path.join(services_dir(store), ".lock"), timeout, "the services"):
        yield


@contextlib.contextmanager
def service_lock(store, name: str, timeout: float | None = None) -> Iterator[None]:
    path = os.path.join(services_dir(store), f".{validate_name(name)}.lock")
    with process_lock(path, timeout, f"service {name}"):
        yield


def exists(store, name: str) -> bool:
    return os.path.exists(record_path(store, name))


def load(store, name: str) -> dict:
    try:
        with open(record_path(store, name)) as f:
            return json.load(f)
    except FileNotFoundError:
        raise NotFound(f"no such service: {name}") from None
    except ValueError as e:
        raise NotFound(f"service {name} has a corrupt record: {e}") from None


def save(store, rec: dict) -> None:
    path = record_path(store, rec["name"])
    atomic_write(path, json.dumps(rec, indent=2, sort_keys=True).encode(), mode=0o600)


def list_names(store) -> list[str]:
    try:
        names = os.listdir(services_dir(store))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not n.startswith(".")
                  and os.path.exists(os.path.join(services_dir(store), n, "service.json")))


def spec_from_record(rec: dict) -> ServiceSpec:
    return ServiceSpec(**rec["spec"])


def spec_to_record(spec: ServiceSpec) -> dict:
    return asdict(spec)
