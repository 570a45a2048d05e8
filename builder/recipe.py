"""The build recipe (`cocker-build.toml`): a small declarative TOML file, not a Dockerfile.

    from = "busybox:1.0"            # an image version in the store (bare name: the newest)
    tag = "myapp"                   # default target; a bare name needs --bump (or tag = "myapp:1.2.0")
    squash = false                  # true: the steps' layers become one layer
    author = "CI <ci@example.org>"  # optional, recorded in the config and history

    [args]                          # defaults for --build-arg; ${NAME} is replaced in strings
    VERSION = "1"

    [config]                        # the final runtime config (applied after the steps)
    cmd = ["/bin/sh"]               # or a string: shell form
    entrypoint = ["/app/run"]
    workdir = "/app"
    env = { MODE = "prod" }
    labels = { "org.example.team" = "infra" }
    user = "nobody"
    expose = ["8080/tcp"]

    [[step]]
    run = "echo ${VERSION} > /version"   # /bin/sh -c, or an array (exec form)
    env = { DEBUG = "1" }                 # only for this command (optional)
    net = "none"                          # "none" (default: hermetic) or "host"

    [[step]]
    copy = ["src/", "/app/"]              # sources..., destination
    # or: copy = { from = "src", to = "/app", mode = "0755", owner = "0:0" }

    [[step]]
    env = { PATH = "/app/bin:/bin" }      # also workdir, labels, cmd, entrypoint, user, expose

`${NAME}` is replaced only for names declared in [args] (others are left to the shell);
`$${NAME}` keeps a literal `${NAME}`. Every error names the file and line.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from builder import changes as changesmod
from builder.changes import Change
from common.errors import CockerError
from registry.oci import reference as refmod

ROOT_KEYS = ("from", "tag", "squash", "author", "args", "config", "step")
CONFIG_KEYS = {"cmd": "cmd", "entrypoint": "entrypoint", "workdir": "workdir", "env": "env",
               "labels": "label", "user": "user", "expose": "expose"}
RUN_MODIFIERS = ("env", "net")
NETS = ("none", "host")
_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SUBST = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RecipeError(CockerError):
    """A recipe that does not parse or says something impossible."""

    exit_code = 2


@dataclass
class Step:
    index: int                      # 1-based, as users count
    line: int
    kind: str                       # "run" | "copy" | "config"
    run: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    net: str = "none"
    sources: list[str] = field(default_factory=list)
    dest: str = ""
    mode: int | None = None
    owner: tuple[int, int] = (0, 0)
    change: Change | None = None
    args_used: dict[str, str] = field(default_factory=dict)

    def content(self) -> dict:
        """Canonical content for the cache key (after ${ARG} substitution)."""
        if self.kind == "run":
            return {"run": self.run, "env": self.env, "net": self.net}
        if self.kind == "copy":
            return {"copy": self.sources, "to": self.dest, "mode": self.mode,
                    "owner": list(self.owner)}
        assert self.change is not None
        return {"config": self.change.kind, "value": self.change.value}

    def describe(self) -> str:
        if self.kind == "run":
            r = self.run or []
            text = r[2] if len(r) == 3 and r[:2] == ["/bin/sh", "-c"] else " ".join(r)
            return f"run: {text}"
        if self.kind == "copy":
            return f"copy: {' '.join(self.sources)} -> {self.dest}"
        assert self.change is not None
        return self.change.describe()


@dataclass
class Recipe:
    path: str
    base: str
    tag: str | None
    squash: bool
    author: str | None
    args: dict[str, str]
    config: list[Change]
    steps: list[Step]


def load(path: str, build_args: dict[str, str] | None = None) -> Recipe:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe not found") from None
    except OSError as e:
        raise RecipeError(f"{path}: {e.strerror}") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text") from None
    return parse(text, path, build_args)


def parse(text: str, path: str = "cocker-build.toml",
          build_args: dict[str, str] | None = None) -> Recipe:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise RecipeError(f"{path}:{m.group(1) if m else 1}: invalid TOML: {msg}") from None
    return _Parser(text, path, doc).recipe(build_args or {})


class _Parser:
    def __init__(self, text: str, path: str, doc: dict) -> None:
        self.path, self.doc = path, doc
        self.lines = _Lines(text)
        self.args: dict[str, str] = {}

    def fail(self, where: list, msg: str) -> RecipeError:
        return RecipeError(f"{self.path}:{self.lines.find(where)}: {msg}")

    # top level -------------------------------------------------------------------------
    def recipe(self, build_args: dict[str, str]) -> Recipe:
        doc = self.doc
        for k in doc:
            if k not in ROOT_KEYS:
                raise self.fail([k], f"unknown key {k!r} (expected one of: {', '.join(ROOT_KEYS)})")
        self._args(doc.get("args", {}), build_args)
        if "from" not in doc:
            raise RecipeError(f"{self.path}:1: missing `from = \"IMAGE[:VERSION]\"`")
        base = self._subst(self._str(["from"], doc["from"]), ["from"], {})
        try:
            refmod.parse(base)
        except CockerError as e:
            raise self.fail(["from"], str(e)) from None
        tag = None
        if "tag" in doc:
            tag = self._subst(self._str(["tag"], doc["tag"]), ["tag"], {})
            try:
                if refmod.parse(tag).digest:
                    raise self.fail(["tag"], "tag must be name or name:version, not a digest")
            except RecipeError:
                raise
            except CockerError as e:
                raise self.fail(["tag"], str(e)) from None
        squash = doc.get("squash", False)
        if not isinstance(squash, bool):
            raise self.fail(["squash"], "squash must be true or false")
        author = None
        if "author" in doc:
            author = self._subst(self._str(["author"], doc["author"]), ["author"], {})
        config = self._config(doc.get("config", {}))
        steps_raw = doc.get("step", [])
        if not isinstance(steps_raw, list) or not all(isinstance(s, dict) for s in steps_raw):
            raise self.fail(["step"], "steps are written as [[step]] tables")
        steps = [self._step(i, s) for i, s in enumerate(steps_raw)]
        return Recipe(self.path, base, tag, squash, author, dict(self.args), config, steps)

    def _args(self, table: Any, build_args: dict[str, str]) -> None:
        if not isinstance(table, dict):
            raise self.fail(["args"], "[args] must be a table of NAME = \"default\"")
        for k, v in table.items():
            if not _ARG_NAME.match(k):
                raise self.fail(["args", k], f"invalid argument name {k!r}")
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise self.fail(["args", k], f"argument {k!r}: default must be a string")
            self.args[k] = str(v)
        for k, v in build_args.items():
            if k not in self.args:
                raise RecipeError(f"{self.path}: --build-arg {k} is not declared in [args]")
            self.args[k] = v

    def _config(self, table: Any) -> list[Change]:
        if not isinstance(table, dict):
            raise self.fail(["config"], "[config] must be a table")
        out = []
        for k, v in table.items():
            if k not in CONFIG_KEYS:
                raise self.fail(["config", k], f"unknown key {k!r} in [config] "
                                f"(expected one of: {', '.join(CONFIG_KEYS)})")
            out.append(self._change(["config", k], CONFIG_KEYS[k], v, {}))
        return out

    # steps -----------------------------------------------------------------------------
    def _step(self, i: int, s: dict) -> Step:
        where = ["step", i]
        line = self.lines.find(where)
        actions = [k for k in s if k in ("run", "copy")]
        if not actions:
            actions = [k for k in s if k in CONFIG_KEYS]
        unknown = [k for k in s if k not in ("run", "copy") and k not in CONFIG_KEYS
                   and k not in RUN_MODIFIERS]
        if unknown:
            raise self.fail(where + [unknown[0]], f"step {i + 1}: unknown key {unknown[0]!r} "
                            "(a step has one of: run, copy, " + ", ".join(CONFIG_KEYS) + ")")
        if len(actions) != 1:
            what = " and ".join(actions) if actions else "nothing to do"
            raise self.fail(where + actions[1:2], f"step {i + 1}: a step does exactly one thing "
                            f"(run, copy or one config setting), this one has {what}")
        action = actions[0]
        used: dict[str, str] = {}
        step = Step(i + 1, line, "config")
        if action == "run":
            step.kind = "run"
            step.run = self._run(where + ["run"], s["run"], used)
            if "env" in s:
                step.env = self._change(where + ["env"], "env", s["env"], used).value
            if "net" in s:
                if s["net"] not in NETS:
                    raise self.fail(where + ["net"], f"step {i + 1}: net must be one of "
                                    f"{', '.join(NETS)}")
                step.net = s["net"]
        else:
            extra = [k for k in s if k != action]
            if extra:
                raise self.fail(where + [extra[0]], f"step {i + 1}: {extra[0]!r} only goes "
                                "with run (use a step of its own to change the config)")
            if action == "copy":
                step.kind = "copy"
                self._copy(step, where + ["copy"], s["copy"], used)
            else:
                step.change = self._change(where + [action], CONFIG_KEYS[action], s[action], used)
        step.args_used = used
        return step

    def _run(self, where: list, v: Any, used: dict) -> list[str]:
        if isinstance(v, str) and v.strip():
            return ["/bin/sh", "-c", self._subst(v, where, used)]
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            return [self._subst(x, where, used) for x in v]
        raise self.fail(where, "run must be a command string or a non-empty array of strings")

    def _copy(self, step: Step, where: list, v: Any, used: dict) -> None:
        srcs: Any
        if isinstance(v, list):
            if len(v) < 2 or not all(isinstance(x, str) and x for x in v):
                raise self.fail(where, "copy = [SOURCE..., DESTINATION] needs at least two "
                                "non-empty strings")
            srcs, dest, mode, owner = v[:-1], v[-1], None, None
        elif isinstance(v, dict):
            for k in v:
                if k not in ("from", "to", "mode", "owner"):
                    raise self.fail(where + [k], f"copy: unknown key {k!r} "
                                    "(expected from, to, mode, owner)")
            srcs = v.get("from")
            srcs = [srcs] if isinstance(srcs, str) else srcs
            if not isinstance(srcs, list) or not srcs or not all(
                    isinstance(x, str) and x for x in srcs):
                raise self.fail(where + ["from"] if "from" in v else where,
                                "copy needs from = \"PATH\" (or an array of paths)")
            dest = v.get("to")
            if not isinstance(dest, str) or not dest:
                raise self.fail(where + ["to"] if "to" in v else where,
                                "copy needs to = \"/destination\"")
            mode, owner = v.get("mode"), v.get("owner")
        else:
            raise self.fail(where, "copy must be [SOURCE..., DEST] or { from = ..., to = ... }")
        step.sources = [self._subst(x, where, used) for x in srcs]
        for src in step.sources:
            if os.path.isabs(src):
                raise self.fail(where, f"copy source {src!r} must be relative to the build context")
        step.dest = self._subst(dest, where, used)
        if mode is not None:
            try:
                step.mode = int(mode, 8) if isinstance(mode, str) else None
            except ValueError:
                step.mode = None
            if step.mode is None or not 0 <= step.mode <= 0o7777:
                raise self.fail(where + ["mode"], f"copy mode {mode!r} must be an octal string "
                                "such as \"0644\"")
        if owner is not None:
            m = re.match(r"^(\d+):(\d+)$", owner) if isinstance(owner, str) else None
            if not m:
                raise self.fail(where + ["owner"], f"copy owner {owner!r} must be \"UID:GID\" "
                                "(numbers)")
            step.owner = (int(m.group(1)), int(m.group(2)))

    # values ----------------------------------------------------------------------------
    def _change(self, where: list, kind: str, v: Any, used: dict) -> Change:
        v = self._subst_any(v, where, used)
        if isinstance(v, dict):
            for k, item in v.items():        # one entry at a time, so the error names its line
                try:
                    changesmod.make(kind, {k: item})
                except ValueError as e:
                    raise self.fail(where + [k], str(e)) from None
        try:
            return changesmod.make(kind, v)
        except ValueError as e:
            raise self.fail(where, str(e)) from None

    def _str(self, where: list, v: Any) -> str:
        if not isinstance(v, str) or not v:
            raise self.fail(where, f"{where[-1]} must be a non-empty string")
        return v

    def _subst_any(self, v: Any, where: list, used: dict) -> Any:
        if isinstance(v, str):
            return self._subst(v, where, used)
        if isinstance(v, list):
            return [self._subst_any(x, where, used) for x in v]
        if isinstance(v, dict):
            return {k: self._subst_any(x, where, used) for k, x in v.items()}
        return v

    def _subst(self, s: str, where: list, used: dict) -> str:
        def repl(m: re.Match) -> str:
            if m.group(0) == "$${":
                return "${"
            name = m.group(1)
            if name not in self.args:
                return m.group(0)  # not ours: a shell variable
            used[name] = self.args[name]
            return self.args[name]
        return _SUBST.sub(repl, s)


class _Lines:
    """Finds the line of a key in TOML source (tomllib gives none for keys).

    Sections are the text under each `[table]` / `[[array]]` header; a key is found at the
    start of a line within its section, nested keys (inline tables) on or after their
    parent's line. Good enough for recipes, which are small and flat.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        # (path tuple, header line number, first body index, end index)
        self.sections: list[tuple[tuple, int, int, int]] = []
        counts: dict[tuple, int] = {}
        current: tuple = ()
        start, header = 0, 1
        in_multi = None
        for i, line in enumerate(self.lines):
            if in_multi:
                if line.count(in_multi) % 2 == 1:
                    in_multi = None
                continue
            for q in ('"""', "'''"):
                if line.count(q) % 2 == 1:
                    in_multi = q
            m = self._HEADER.match(line)
            if m and not in_multi:
                self.sections.append((current, header, start, i))
                name = tuple(p.strip().strip("\"'") for p in m.group(2).split("."))
                if m.group(1) == "[[":
                    n = counts.get(name, 0)
                    counts[name] = n + 1
                    name = name + (n,)
                current, header, start = name, i + 1, i + 1
        self.sections.append((current, header, start, len(self.lines)))

    def find(self, path: list) -> int:
        best = None
        for split in range(len(path), -1, -1):
            sec, chain = tuple(path[:split]), [p for p in path[split:]]
            for name, header, lo, hi in self.sections:
                if name != sec:
                    continue
                if not chain:
                    best = best or header
                    continue
                line = self._chain(chain, lo, hi)
                if line:
                    return line
        return best or 1

    def _chain(self, chain: list, lo: int, hi: int) -> int | None:
        if any(not isinstance(k, str) for k in chain):
            return None
        first = _key_re(chain[0], start=True)
        pos = None
        for i in range(lo, hi):
            if first.search(self.lines[i]):
                pos = i
                break
        if pos is None:
            return None
        for key in chain[1:]:
            r = _key_re(key, start=False)
            for i in range(pos, hi):
                if r.search(self.lines[i]):
                    pos = i
                    break
            else:
                return pos + 1
        return pos + 1


def _key_re(key: str, *, start: bool) -> re.Pattern:
    k = re.escape(key)
    alt = rf"(?:\"{k}\"|'{k}'|{k})"
    if start:
        return re.compile(rf"^\s*{alt}\s*[=.]")
    return re.compile(rf"(?:^|[\s{{,]){alt}\s*=")
