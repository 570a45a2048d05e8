"""brocker's v1 answers, in exactly the shapes its Go client decodes.

brocker-client decodes `container/list` into a struct whose fields each have one JSON type
(`command` is the whole command line as a string; `StartTime` an RFC 3339 time); any other type
makes the whole decode fail, so every key is always present with its own type, never null.
`container/exec` takes the whole response body as a pid and runs
`nsenter --target <body> --pid --net --mount CMD`, so the body is the bare decimal pid of a
process inside the container's namespaces: its first process, not cocker's monitor.
"""

from __future__ import annotations

import datetime
import os
import shlex
from typing import Any

from common.errors import Conflict

ZERO_TIME = "0001-01-01T00:00:00Z"          # Go's zero time.Time, as it marshals it


def _rfc3339(epoch: float | None) -> str:
    if not epoch:
        return ZERO_TIME
    t = datetime.datetime.fromtimestamp(float(epoch), tz=datetime.UTC)
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def _brocker_file(store: Any, name: str, volumes: list[str]) -> tuple[bool, str, str]:
    """(copy-file, file, Directory) of a container made from brocker's container JSON."""
    appdir = store.paths.brocker_app(name)
    for v in volumes:
        src, _, dst = v.partition(":")
        if src == appdir and dst.split(":")[0] == "/app":
            try:
                files = sorted(os.listdir(appdir))
            except OSError:
                files = []
            return True, os.path.join(appdir, files[0]) if files else "", appdir
        if dst.startswith("/app/"):
            return False, src, ""
    return False, "", ""


def _veth(info: dict, endpoints: dict[str, dict]) -> str:
    ep = endpoints.get(info["name"]) or {}
    return str(ep.get("veth") or "")


def container_entry(store: Any, info: dict, record: dict, endpoints: dict[str, dict],
                    first_pid: int | None) -> dict[str, Any]:
    """One element of `container/list`: the container's info() and record in brocker's shape
    (`Pid` is the container's first process, the one `exec` gives)."""
    copy_file, file, directory = _brocker_file(store, info["name"], record.get("volumes") or [])
    running = info.get("status") == "running"
    return {
        "Name": info["name"],
        "service-name": str(info.get("service") or ""),
        "command": shlex.join(info.get("command") or []),
        "copy-file": copy_file,
        "file": file,
        "Pid": int(first_pid or 0) if running else 0,
        "IP": str(info.get("ip") or ""),
        "StartTime": _rfc3339(info.get("started_at")),
        "VEth": _veth(info, endpoints) if running else "",
        "Directory": directory,
        "Active": running,
    }


def exec_target(name: str, running: bool, first_pid: int | None) -> str:
    """The body of `container/exec`: the pid brocker's client nsenters, as bare digits."""
    if not running or not first_pid:
        raise Conflict(f"container {name} is not running")
    return str(first_pid)
