"""The daemon's routes: cocker's own (/api/v2/...) and brocker's (/api/v1/...).

Reads (lists, inspects) are answered in the daemon from the store on disk. Anything that starts
or stops processes runs in a worker process (runtime.daemon.worker), so the daemon keeps no state
and no children: restarted, it finds everything as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from common import errors
from common.errors import CockerError, UsageError
from registry.repo import image as imagemod
from registry.repo import local_refs
from registry.repo.store import Store
from runtime.container import record
from runtime.daemon import brocker_v1
from runtime.net import network
from runtime.services import manager as services

CLI_TIMEOUT = 3600
WORKER_TIMEOUT = 600

STATUS = {  # error class -> HTTP status
    "NotFound": 404, "AlreadyExists": 409, "Conflict": 409, "LockBusy": 423,
    "UsageError": 400, "InvalidReference": 400, "PermissionDenied": 403, "AuthError": 401,
}


class PlainText(str):
    """A body sent as it is (text/plain, no newline), for clients that read the raw body."""


class HttpError(Exception):
    def __init__(self, status: int, message: str, kind: str = "CockerError") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    home: str


def error_status(e: CockerError) -> int:
    for cls in type(e).__mro__:
        if cls.__name__ in STATUS:
            return STATUS[cls.__name__]
    return 500


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COCKER_HOST", None)     # a forwarded command must run here, not forward again
    env["COCKER_QUIET"] = "1"
    return env


def worker(home: str, op: str, args: dict) -> Any:
    p = subprocess.run([sys.executable, "-m", "runtime.daemon.worker", "--home", home],
                       input=json.dumps({"op": op, "args": args}), capture_output=True, text=True,
                       timeout=WORKER_TIMEOUT, env=child_env(), cwd="/")
    try:
        out = json.loads(p.stdout)
    except ValueError:
        raise HttpError(500, f"worker failed (exit {p.returncode}): "
                             f"{(p.stderr.strip().splitlines() or ['no output'])[-1]}") from None
    if "error" in out:
        cls = getattr(errors, out.get("type", ""), CockerError)
        if not (isinstance(cls, type) and issubclass(cls, CockerError)):
            cls = CockerError
        raise cls(out["error"])
    return out["result"]


def run_cli(home: str, argv: object) -> dict:
    """Run a cocker command as the daemon (its store, its privileges); capture everything."""
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise UsageError("'argv' must be a list of strings")
    if argv and argv[0] == "daemon":
        raise UsageError("cannot start a daemon through a daemon")
    try:
        p = subprocess.run([sys.executable, "-m", "cocker.main", "--home", home, *argv],
                           capture_output=True, text=True, timeout=CLI_TIMEOUT, env=child_env(),
                           stdin=subprocess.DEVNULL, cwd="/")
    except subprocess.TimeoutExpired:
        raise HttpError(504, f"command took longer than {CLI_TIMEOUT}s") from None
    return {"exit_code": p.returncode, "stdout": p.stdout, "stderr": p.stderr}


def _store(home: str):
    return Store(home)


def _body(req: Request) -> dict:
    if not isinstance(req.body, dict):
        raise UsageError("expected a JSON object as the request body")
    return req.body


def _name(req: Request) -> str:
    n = _body(req).get("name")
    if not isinstance(n, str) or not n:
        raise UsageError("expected {\"name\": ...}")
    return n


# ---- brocker's API (v1) -------------------------------------------------------------------

def v1_container_run(req: Request, m) -> tuple[int, Any]:
    info = worker(req.home, "brocker_container_run", {"body": _body(req)})
    return 201, info


def _bridge_endpoints(store) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for n in network.list_networks(store):
        with contextlib.suppress(CockerError):
            out.update(network.get_network(store, n["name"]).get("endpoints") or {})
    return out


def v1_container_list(req: Request, m) -> tuple[int, Any]:
    store = _store(req.home)
    endpoints = _bridge_endpoints(store)
    out = []
    for c in record.list_containers(store, all=True):
        info = c.info()
        first = c.workload_pid() if info["status"] == "running" else None
        out.append(brocker_v1.container_entry(store, info, c.record, endpoints, first))
    return 200, out


def v1_container_exec(req: Request, m) -> tuple[int, Any]:
    """brocker's client takes the body as the pid to nsenter: bare digits of the container's
    first process (in its pid, net and mount namespaces)."""
    c = record.load(_store(req.home), _name(req))
    running = c.state() == "running"
    return 200, PlainText(brocker_v1.exec_target(c.name, running,
                                                 c.workload_pid() if running else None))


def v1_container_stop(req: Request, m) -> tuple[int, Any]:
    return 200, worker(req.home, "container_stop", {"name": _name(req)})


def v1_service_add(req: Request, m) -> tuple[int, Any]:
    return 201, worker(req.home, "service_add", {"body": _body(req)})


# ---- cocker's API (v2) --------------------------------------------------------------------

def _containers(home: str) -> list[dict]:
    return [c.info() for c in record.list_containers(_store(home), all=True)]


def v2_version(req: Request, m) -> tuple[int, Any]:
    try:
        v = version("cocker")
    except PackageNotFoundError:
        v = "unknown"
    return 200, {"version": v, "api": [1, 2], "home": req.home, "pid": os.getpid()}


def v2_cli(req: Request, m) -> tuple[int, Any]:
    return 200, run_cli(req.home, _body(req).get("argv"))


def v2_containers_list(req: Request, m) -> tuple[int, Any]:
    return 200, _containers(req.home)


def v2_container_inspect(req: Request, m) -> tuple[int, Any]:
    return 200, record.load(_store(req.home), m["name"]).info()


def v2_containers_create(req: Request, m) -> tuple[int, Any]:
    return 201, worker(req.home, "container_create", {"spec": _body(req)})


def v2_containers_run(req: Request, m) -> tuple[int, Any]:
    return 201, worker(req.home, "container_run", {"spec": _body(req)})


def v2_container_action(req: Request, m) -> tuple[int, Any]:
    action, name = m["action"], m["name"]
    body = req.body if isinstance(req.body, dict) else {}
    if action == "exec":
        argv = body.get("argv")
        if not isinstance(argv, list) or not argv:
            raise UsageError("exec needs {\"argv\": [...]}")
        return 200, run_cli(req.home, ["container", "exec", name, *argv])
    op = {"start": "container_start", "stop": "container_stop", "kill": "container_kill"}[action]
    return 200, worker(req.home, op, {**body, "name": name})


def v2_container_rm(req: Request, m) -> tuple[int, Any]:
    force = req.query.get("force", "") in ("1", "true", "yes")
    return 200, worker(req.home, "container_rm", {"name": m["name"], "force": force})


def v2_images_list(req: Request, m) -> tuple[int, Any]:
    return 200, [i.summary() for i in imagemod.list_images(_store(req.home), req.query.get("name"))]


def v2_image_inspect(req: Request, m) -> tuple[int, Any]:
    return 200, imagemod.load(_store(req.home), m["ref"]).inspect()


def v2_image_rm(req: Request, m) -> tuple[int, Any]:
    """Refused (409) for a version a container was created from, unless ?force=1; the
    status comes from the error's class, as for every route."""
    force = req.query.get("force", "") in ("1", "true", "yes")
    removed = local_refs.remove(_store(req.home), [m["ref"]], force=force)
    return 200, {"ref": m["ref"], "removed": [str(r) for r in removed]}


def v2_services_list(req: Request, m) -> tuple[int, Any]:
    return 200, services.list_services(_store(req.home))


def v2_service_inspect(req: Request, m) -> tuple[int, Any]:
    return 200, services.inspect(_store(req.home), m["name"])


def v2_services_create(req: Request, m) -> tuple[int, Any]:
    return 201, worker(req.home, "service_create", {"spec": _body(req)})


def v2_service_scale(req: Request, m) -> tuple[int, Any]:
    n = _body(req).get("replicas")
    return 200, worker(req.home, "service_scale", {"name": m["name"], "replicas": n})


def v2_service_update(req: Request, m) -> tuple[int, Any]:
    img = _body(req).get("image")
    if not isinstance(img, str):
        raise UsageError("update needs {\"image\": REF}")
    return 200, worker(req.home, "service_update", {"name": m["name"], "image": img})


def v2_service_rm(req: Request, m) -> tuple[int, Any]:
    return 200, worker(req.home, "service_rm", {"name": m["name"]})


NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)"
REF = r"(?P<ref>[^?#]+)"
Handler = Callable[[Request, dict], tuple[int, Any]]
ROUTES: list[tuple[str, re.Pattern, Handler]] = [(meth, re.compile(f"^{pat}$"), fn) for meth, pat, fn in [
    ("POST", "/api/v1/container/run", v1_container_run),
    ("POST", "/api/v1/container/list", v1_container_list),
    ("GET", "/api/v1/container/list", v1_container_list),
    ("POST", "/api/v1/container/exec", v1_container_exec),
    ("POST", "/api/v1/container/stop", v1_container_stop),
    ("POST", "/api/v1/service/add", v1_service_add),
    ("GET", "/api/v2/version", v2_version),
    ("GET", "/_ping", v2_version),
    ("POST", "/api/v2/cli", v2_cli),
    ("GET", "/api/v2/containers", v2_containers_list),
    ("POST", "/api/v2/containers", v2_containers_create),
    ("POST", "/api/v2/containers/run", v2_containers_run),
    ("GET", f"/api/v2/containers/{NAME}", v2_container_inspect),
    ("POST", f"/api/v2/containers/{NAME}/(?P<action>start|stop|kill|exec)", v2_container_action),
    ("DELETE", f"/api/v2/containers/{NAME}", v2_container_rm),
    ("GET", "/api/v2/images", v2_images_list),
    ("GET", f"/api/v2/images/{REF}", v2_image_inspect),
    ("DELETE", f"/api/v2/images/{REF}", v2_image_rm),
    ("GET", "/api/v2/services", v2_services_list),
    ("POST", "/api/v2/services", v2_services_create),
    ("GET", f"/api/v2/services/{NAME}", v2_service_inspect),
    ("POST", f"/api/v2/services/{NAME}/scale", v2_service_scale),
    ("POST", f"/api/v2/services/{NAME}/update", v2_service_update),
    ("DELETE", f"/api/v2/services/{NAME}", v2_service_rm),
]]


def dispatch(req: Request) -> tuple[int, Any]:
    """(status, JSON-able body) for a request; errors as {"error", "type"} with their status."""
    path = urllib.parse.unquote(req.path)
    allowed = []
    for method, pat, fn in ROUTES:
        m = pat.match(path)
        if not m:
            continue
        if method != req.method:
            allowed.append(method)
            continue
        try:
            return fn(req, m.groupdict())
        except HttpError as e:
            return e.status, {"error": str(e), "type": e.kind}
        except CockerError as e:
            return error_status(e), {"error": str(e), "type": type(e).__name__}
        except subprocess.TimeoutExpired:
            return 504, {"error": "operation timed out", "type": "CockerError"}
        except OSError as e:
            return 500, {"error": f"{e.strerror or e}", "type": "CockerError"}
        except Exception as e:  # noqa: BLE001 -- a bug must not drop the connection unanswered
            return 500, {"error": f"internal error: {type(e).__name__}: {e}", "type": "CockerError"}
    if allowed:
        return 405, {"error": f"{req.method} not allowed on {path} (use {', '.join(sorted(set(allowed)))})",
                     "type": "UsageError"}
    return 404, {"error": f"no route {req.method} {path}", "type": "NotFound"}


__all__ = ["dispatch", "PlainText", "Request", "run_cli", "worker"]
