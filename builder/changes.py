"""Edits to an image's runtime config: `--change 'CMD ...'` lines and recipe config keys.

Both the commit command and the recipe builder turn their input into `Change`s and apply
them with `apply`, so the two agree on meaning:

    CMD / ENTRYPOINT   JSON array (exec form) or plain text (shell form: /bin/sh -c TEXT);
                       an empty JSON array clears the setting
    ENV K=V [K2=V2]    adds or replaces variables (values may be quoted)
    WORKDIR /abs/path  LABEL k=v [k2=v2]   USER name[:group]   EXPOSE 80[/tcp] [443/tcp]

Setting ENTRYPOINT leaves CMD alone (unlike a Dockerfile), so a commit changes only what
the user asked for.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Any

from common.errors import UsageError

KINDS = ("cmd", "entrypoint", "env", "workdir", "label", "user", "expose")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PORT = re.compile(r"^([0-9]{1,5})(?:/(tcp|udp|sctp))?$")


@dataclass(frozen=True)
class Change:
    kind: str     # one of KINDS
    value: Any    # list[str] for cmd/entrypoint/expose, dict for env/label, str otherwise

    def describe(self) -> str:
        v = self.value
        if isinstance(v, dict):
            v = " ".join(f"{k}={val}" for k, val in v.items())
        elif isinstance(v, list):
            v = json.dumps(v)
        return f"{self.kind.upper()} {v}"


def parse_change(text: str) -> Change:
    """One `--change` line, e.g. `CMD ["/bin/sh"]`, `ENV A=1 B="two words"`."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError("empty --change")
    word, _, rest = text.strip().partition(" ")
    kind, rest = word.lower(), rest.strip()
    if kind not in KINDS:
        raise UsageError(f"--change {text!r}: unknown instruction {word!r} "
                         f"(use {', '.join(k.upper() for k in KINDS)})")
    if not rest:
        raise UsageError(f"--change {text!r}: {word.upper()} needs a value")
    try:
        if kind in ("cmd", "entrypoint"):
            return make(kind, json.loads(rest) if rest.startswith("[") else rest)
        if kind in ("env", "label"):
            return make(kind, _pairs(rest, text))
        if kind == "expose":
            return make(kind, rest.split())
        return make(kind, rest)
    except ValueError as e:
        raise UsageError(f"--change {text!r}: {e}") from None


def _pairs(rest: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for tok in shlex.split(rest):
        k, sep, v = tok.partition("=")
        if not sep or not k:
            raise ValueError(f"expected KEY=VALUE, got {tok!r}")
        out[k] = v
    return out


def make(kind: str, value: Any) -> Change:
    """A validated Change; raises ValueError describing what is wrong with `value`."""
    if kind in ("cmd", "entrypoint"):
        if isinstance(value, str):
            if not value.strip():
                raise ValueError(f"{kind} must not be empty")
            return Change(kind, ["/bin/sh", "-c", value])
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return Change(kind, list(value))
        raise ValueError(f"{kind} must be a string (shell form) or an array of strings")
    if kind == "env":
        env = _str_table(value, kind)
        for k in env:
            if not _ENV_NAME.match(k):
                raise ValueError(f"invalid environment variable name {k!r}")
        return Change(kind, env)
    if kind == "label":
        labels = _str_table(value, kind)
        if any(not k for k in labels):
            raise ValueError("label names must not be empty")
        return Change(kind, labels)
    if kind == "workdir":
        if not isinstance(value, str) or not value.startswith("/"):
            raise ValueError("workdir must be an absolute path")
        return Change(kind, posixpath.normpath(value))
    if kind == "user":
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise ValueError("user must be a name or uid, optionally :group")
        return Change(kind, value)
    if kind == "expose":
        ports = value if isinstance(value, list) else [value]
        out = []
        for p in ports:
            m = _PORT.match(str(p)) if isinstance(p, (str, int)) and not isinstance(p, bool) else None
            if not m or not 0 < int(m.group(1)) < 65536:
                raise ValueError(f"invalid port {p!r} (use 80, 80/tcp or 53/udp)")
            out.append(f"{int(m.group(1))}/{m.group(2) or 'tcp'}")
        return Change(kind, out)
    raise ValueError(f"unknown config setting {kind!r}")


def _str_table(value: Any, kind: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"{kind} must be a table of names to strings")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ValueError(f"{kind} {k!r}: value must be a string")
        out[str(k)] = str(v)
    return out


def apply(config: dict, changes: list[Change]) -> dict:
    """A copy of the image config with the runtime settings (`config["config"]`) changed."""
    cfg = dict(config)
    rc = dict(cfg.get("config") or {})
    for ch in changes:
        if ch.kind == "cmd":
            _set_or_clear(rc, "Cmd", ch.value)
        elif ch.kind == "entrypoint":
            _set_or_clear(rc, "Entrypoint", ch.value)
        elif ch.kind == "workdir":
            rc["WorkingDir"] = ch.value
        elif ch.kind == "user":
            rc["User"] = ch.value
        elif ch.kind == "env":
            env = [e for e in rc.get("Env") or [] if e.partition("=")[0] not in ch.value]
            env += [f"{k}={v}" for k, v in ch.value.items()]
            rc["Env"] = env
        elif ch.kind == "label":
            rc["Labels"] = {**(rc.get("Labels") or {}), **ch.value}
        elif ch.kind == "expose":
            rc["ExposedPorts"] = {**(rc.get("ExposedPorts") or {}), **{p: {} for p in ch.value}}
    cfg["config"] = rc
    return cfg


def _set_or_clear(rc: dict, key: str, value: list[str]) -> None:
    if value:
        rc[key] = list(value)
    else:
        rc.pop(key, None)
