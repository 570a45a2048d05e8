"""brocker's JSON files, read strictly, extended with cocker's fields.

brocker's service file:   {"name": "mydetails", "bridge-ip": "10.0.1.1"}
brocker's container file: {"service-name": "mydetails", "command": "/usr/bin/java -jar /app/demo.war",
                           "copy-file": true, "file": "/home/u/demo.war"}

cocker adds `image`, `replicas`, `publish`, `port` (and a few container options). Every field has
one type; a wrong type or an unknown field is an error that names it (brocker ignored both).
Commands are split like a shell would (shlex), not on every space as brocker did, or given as a
JSON list. brocker had no images: a container without `image` takes its service's image; one with
neither is refused.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from common.errors import NotFound, UsageError
from registry.repo.store import Store
from runtime.container import lifecycle
from runtime.container.spec import ContainerSpec
from runtime.services import manager as services
from runtime.services import state as service_state
from runtime.services.app_dirs import app_dir, remove_app_dir, stage_files
from runtime.services.state import ServiceSpec, validate_name, validate_port

_STR = (str,)

# field -> (types accepted, description for errors)
SERVICE_FIELDS: dict[str, tuple[tuple, str]] = {
    "name": (_STR, "a string"),
    "bridge-ip": (_STR, "a string (an IPv4 address)"),
    "image": (_STR, "a string (an image reference)"),
    "replicas": ((int,), "a whole number"),
    "publish": ((str, list), "a string or a list of strings"),
    "port": ((int,), "a port number"),
    "subnet": (_STR, "a string (CIDR)"),
    "command": ((str, list), "a string or a list of strings"),
    "env": ((list, dict), "a list of KEY=VALUE strings or an object"),
    "restart": (_STR, "a string"),
}

CONTAINER_FIELDS: dict[str, tuple[tuple, str]] = {
    "name": (_STR, "a string"),
    "service-name": (_STR, "a string"),
    "command": ((str, list), "a string or a list of strings"),
    "copy-file": ((bool,), "true or false"),
    "file": (_STR, "a string (a path)"),
    "image": (_STR, "a string (an image reference)"),
    "publish": ((str, list), "a string or a list of strings"),
    "port": ((int,), "a port number"),
    "env": ((list, dict), "a list of KEY=VALUE strings or an object"),
    "hostname": (_STR, "a string"),
    # cocker's opt-ins out of the default confinement, named as the CLI's flags
    "user": (_STR, "a string (uid[:gid] or name[:group])"),
    "init": ((bool,), "true or false"),
    "privileged": ((bool,), "true or false"),
    "read-only": ((bool,), "true or false"),
    "cap-add": ((str, list), "a string or a list of strings"),
    "cap-drop": ((str, list), "a string or a list of strings"),
    "security-opt": ((str, list), "a string or a list of strings"),
    "device": ((str, list), "a string or a list of strings"),
    "userns": (_STR, "host or auto"),
}


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_fields(data: dict, fields: dict[str, tuple[tuple, str]], what: str) -> None:
    """Unknown fields and wrong types are errors that name the field."""
    for key, value in data.items():
        if key not in fields:
            raise UsageError(f"{what}: unknown field {key!r} (known: {', '.join(sorted(fields))})")
        types, desc = fields[key]
        # bool is an int in Python; JSON true is not a replica count
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if ok and isinstance(value, list):
            ok = all(isinstance(v, str) for v in value)
        if ok and isinstance(value, dict):
            ok = all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                     for v in value.values())
        if not ok:
            raise UsageError(f"{what}: field {key!r} must be {desc}, not {_json_type(value)}")


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"a number ({v})"
    if isinstance(v, str):
        return f"a string ({v!r})"
    if isinstance(v, list):
        return "a list" if all(isinstance(x, str) for x in v) else "a list with non-strings"
    return "an object"


def _command(v: str | list | None) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, list):
        return list(v) or None
    try:
        return shlex.split(v) or None
    except ValueError as e:
        raise UsageError(f"command {v!r}: {e}") from None


def _env(v: list | dict | None) -> list[str]:
    if v is None:
        return []
    if isinstance(v, dict):
        return [f"{k}={val}" for k, val in v.items()]
    for item in v:
        if "=" not in item:
            raise UsageError(f"env entry {item!r} is not KEY=VALUE")
    return list(v)


def _strings(v: str | list | None) -> list[str]:
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    if not all(isinstance(x, str) for x in items):
        raise UsageError(f"expected a string or a list of strings, not {v!r}")
    return list(items)


def _publish(v: str | list | None) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


def bridge_subnet(bridge_ip: str) -> str:
    """brocker's `bridge-ip` (the bridge's own address) -> the /24 it heads."""
    try:
        iface = ipaddress.ip_interface(bridge_ip if "/" in bridge_ip else bridge_ip + "/24")
    except ValueError:
        raise UsageError(f"bridge-ip {bridge_ip!r} is not an IPv4 address") from None
    if iface.version != 4:
        raise UsageError(f"bridge-ip {bridge_ip!r} is not an IPv4 address")
    net = iface.network
    if iface.ip != net.network_address + 1:
        raise UsageError(f"bridge-ip {bridge_ip}: cocker gives the bridge the first address of "
                         f"its subnet; use {net.network_address + 1} (or `subnet`)")
    return str(net)


def service_spec(data: dict, what: str = "service JSON") -> ServiceSpec:
    check_fields(data, SERVICE_FIELDS, what)
    if "name" not in data:
        raise UsageError(f"{what}: missing field 'name'")
    if "bridge-ip" in data and "subnet" in data:
        raise UsageError(f"{what}: give 'bridge-ip' or 'subnet', not both")
    subnet = data.get("subnet")
    if "bridge-ip" in data:
        subnet = bridge_subnet(data["bridge-ip"])
    image = data.get("image")
    replicas = data.get("replicas", 1 if image else 0)
    spec = ServiceSpec(
        name=validate_name(data["name"]), image=image, replicas=replicas,
        port=validate_port(data["port"], "port") if "port" in data else ServiceSpec.port,
        publish=_publish(data.get("publish")), subnet=subnet,
        command=_command(data.get("command")), env=_env(data.get("env")),
        restart=data.get("restart", "always"))
    return spec.validate()


def service_spec_from_file(path: str) -> ServiceSpec:
    return service_spec(read_json(path), what=path)


def brocker_name(command: list[str] | None) -> str:
    """brocker's naming: the first 8 hex digits of sha1(start time + command)."""
    seed = f"{time.time_ns()}{' '.join(command or [])}{os.getpid()}".encode()
    return hashlib.sha1(seed).hexdigest()[:8]


@dataclass
class BrockerContainer:
    spec: ContainerSpec
    service: str | None            # the service it joins
    port: int | None               # the port it serves on (default: the service's)
    copies: list[str] = field(default_factory=list)   # files to copy into its /app

    @property
    def name(self) -> str:
        return self.spec.name or ""       # always set: a brocker file's name or one made up


def container_spec(data: dict, *, store=None, what: str = "container JSON",
                   default_image: str | None = None) -> BrockerContainer:
    """brocker's container JSON -> a ContainerSpec and what goes with it.

    A `file` appears inside the container as /app/<basename>: with `copy-file` true a private
    copy is made (store.home/containers/<name>/app/, brocker's /container/<name>) and the
    directory is mounted on /app; otherwise the file is bind-mounted read-only.
    """

    check_fields(data, CONTAINER_FIELDS, what)
    service = data.get("service-name")
    if service is not None:
        validate_name(service)
        if not data.get("image") and default_image is None and store is not None:
            default_image = _service_image(store, service)
    image = data.get("image") or default_image
    if not image:
        raise UsageError(f"{what}: no 'image' (brocker had none: name the image version to run, "
                         "or join a service that has one via 'service-name')")
    command = _command(data.get("command"))
    name = data.get("name") or brocker_name(command)
    port = validate_port(data["port"], "port") if "port" in data else None
    volumes: list[str] = []
    copies: list[str] = []
    if data.get("copy-file") and "file" not in data:
        raise UsageError(f"{what}: 'copy-file' is true but there is no 'file'")
    if "file" in data:
        src = os.path.abspath(os.path.expanduser(data["file"]))
        if not os.path.isfile(src):
            raise NotFound(f"{what}: file {data['file']!r} does not exist")
        if data.get("copy-file"):
            if store is None:
                store = _default_store()
            volumes.append(f"{app_dir(store, name)}:/app")
            copies.append(src)
        else:
            volumes.append(f"{src}:/app/{os.path.basename(src)}:ro")
    spec = ContainerSpec(image=image, name=name, command=command, env=_env(data.get("env")),
                         ports=_publish(data.get("publish")), volumes=volumes,
                         hostname=data.get("hostname"), user=data.get("user"),
                         init=bool(data.get("init")), privileged=bool(data.get("privileged")),
                         read_only=bool(data.get("read-only")),
                         cap_add=_strings(data.get("cap-add")),
                         cap_drop=_strings(data.get("cap-drop")),
                         security_opt=_strings(data.get("security-opt")),
                         devices=_strings(data.get("device")),
                         userns=data.get("userns") or "")
    return BrockerContainer(spec, service, port, copies)


def _default_store():
    return Store()


def container_spec_from_file(path: str, store=None):
    """`cocker container run -f FILE.json`: (ContainerSpec, service name or None).

    The private copy of `file` (copy-file) is made here, so the spec is ready for create().
    """
    if store is None:
        store = _default_store()
    bc = container_spec(read_json(path), store=store, what=path)
    stage_files(store, bc.name, bc.copies)
    return bc.spec, bc.service


def _service_image(store, service: str) -> str | None:
    """A container file naming a service but no image runs the service's image."""
    try:
        return service_state.load(store, service)["spec"].get("image")
    except (NotFound, UsageError):
        return None


def run_file(store, path: str, *, rm: bool = False, detach: bool = True,
             interactive: bool = False) -> tuple[str, int | None]:
    """`cocker container run -f FILE.json` (and brocker's /api/v1/container/run): a container
    with a `service-name` joins that service (always in the background); one without runs
    like any container. Returns (container name, exit code when run in the foreground)."""
    bc = container_spec(read_json(path), store=store, what=path)
    stage_files(store, bc.name, bc.copies)
    try:
        if bc.service:
            services.join(store, bc.service, bc.spec, bc.port)
            return bc.name, None
        code = lifecycle.run(store, bc.spec, rm=rm, detach=detach, interactive=interactive)
    except BaseException:
        if not os.path.exists(os.path.join(store.containers_dir, bc.name)):
            remove_app_dir(store, bc.name)
        raise
    return bc.name, None if detach else code
