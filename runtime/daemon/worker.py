"""One daemon operation in a process of its own: `python -m runtime.daemon.worker --home HOME`.

The daemon never starts containers, nginx or monitors from its own threads: those processes
would be its children (zombies to reap, signals to share, exit codes lost to a stray waitpid).
A short-lived worker does the work and exits, so what it started is adopted by init — exactly
as when a user runs the command in a shell. Request on stdin, answer on stdout, both JSON:
  {"op": "...", "args": {...}}  ->  {"result": ...}  |  {"error": "...", "type": "NotFound"}
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from common.errors import CockerError, UsageError
from registry.repo.store import Store
from runtime.brocker import files as brocker_json
from runtime.container import lifecycle, record
from runtime.container.spec import ContainerSpec
from runtime.services import manager as services
from runtime.services.state import ServiceSpec


def _container_spec(args: dict):
    allowed = set(ContainerSpec._fields)
    unknown = set(args) - allowed
    if unknown:
        raise UsageError(f"unknown container field(s): {', '.join(sorted(unknown))}")
    if "image" not in args:
        raise UsageError("a container needs an 'image'")
    return ContainerSpec(**args)


def container_create(store: Store, a: dict) -> dict:
    return lifecycle.create(store, _container_spec(a["spec"])).info()


def container_run(store: Store, a: dict) -> dict:
    """Create and start (detached)."""
    spec = _container_spec(a["spec"])
    c = lifecycle.create(store, spec)
    try:
        lifecycle.start(store, c.name)
    except BaseException:
        lifecycle.remove(store, c.name, force=True)
        raise
    return record.load(store, c.name).info()


def container_start(store: Store, a: dict) -> dict:
    lifecycle.start(store, a["name"])
    return record.load(store, a["name"]).info()


def container_restart_policy(store: Store, a: dict) -> dict:
    """The daemon restarting a container as its --restart policy says."""
    done = lifecycle.restart_by_policy(store, a["name"],
                                       at_daemon_start=bool(a.get("at_daemon_start")))
    return {"name": a["name"], "restarted": done}


def container_stop(store: Store, a: dict) -> dict:
    c = record.load(store, a["name"])
    svc = c.labels.get("service")
    timeout = float(a.get("timeout", 10))
    if svc and services.st.exists(store, svc):
        services.stop_member(store, svc, c.name, timeout)   # out of nginx first, not restarted
    else:
        lifecycle.stop(store, c.name, timeout=timeout)
    return {"name": a["name"], "stopped": True}


def container_kill(store: Store, a: dict) -> dict:

    sig = a.get("signal", "KILL")
    signum = sig if isinstance(sig, int) else getattr(signal, "SIG" + str(sig).upper().removeprefix("SIG"))
    lifecycle.kill(store, a["name"], signum)
    return {"name": a["name"], "signal": int(signum)}


def container_rm(store: Store, a: dict) -> dict:
    lifecycle.remove(store, a["name"], force=bool(a.get("force")))
    return {"name": a["name"], "removed": True}


def brocker_container_run(store: Store, a: dict) -> dict:
    """brocker's /api/v1/container/run: a container JSON; with service-name it joins it."""
    bc = brocker_json.container_spec(a["body"], store=store, what="container JSON")
    brocker_json.stage_files(store, bc.name, bc.copies)
    if bc.service:
        services.join(store, bc.service, bc.spec, bc.port)
        return record.load(store, bc.name).info()
    return container_run(store, {"spec": _spec_dict(bc.spec)})


def _spec_dict(spec) -> dict:
    return spec._asdict()


def service_create(store: Store, a: dict) -> dict:
    allowed = set(ServiceSpec.__dataclass_fields__)
    unknown = set(a["spec"]) - allowed
    if unknown:
        raise UsageError(f"unknown service field(s): {', '.join(sorted(unknown))}")
    return services.create(store, ServiceSpec(**a["spec"]))


def service_add(store: Store, a: dict) -> dict:
    return services.create(store, brocker_json.service_spec(a["body"]))


def service_scale(store: Store, a: dict) -> dict:
    return services.scale(store, a["name"], a["replicas"])


def service_update(store: Store, a: dict) -> dict:
    return services.update(store, a["name"], a["image"])


def service_rm(store: Store, a: dict) -> dict:
    services.remove(store, a["name"])
    return {"name": a["name"], "removed": True}


def ensure_monitors(store: Store, a: dict) -> dict:
    services.ensure_all_monitors(store)
    return {}


OPS: dict[str, Callable[[Store, dict], Any]] = {
    f.__name__: f for f in (container_create, container_run, container_start, container_stop,
                            container_restart_policy,
                            container_kill, container_rm, brocker_container_run, service_create,
                            service_add, service_scale, service_update, service_rm, ensure_monitors)
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    home = ap.parse_args().home
    try:
        req = json.load(sys.stdin)
        fn = OPS.get(req.get("op"))
        if fn is None:
            raise UsageError(f"unknown operation {req.get('op')!r}")
        result = fn(Store(home), req.get("args") or {})
        out = {"result": result}
    except CockerError as e:
        out = {"error": str(e), "type": type(e).__name__}
    except (KeyError, TypeError, ValueError) as e:
        out = {"error": f"bad request: {type(e).__name__}: {e}", "type": "UsageError"}
    except OSError as e:
        out = {"error": f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
               "type": "CockerError"}
    sys.stdout.write(json.dumps(out, default=str))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
