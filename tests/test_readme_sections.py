"""The README beyond the tour (comparison, service, CI job, the way out): every `cocker` command
in its code blocks names commands and options that exist, so the examples a user copies into a
CI file keep working. (The tour itself is run for real by test_readme.py.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from cocker.main import cli

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK_RE = re.compile(r"```[a-z]*\n(.*?)```", re.S)


def _sections_after_tour() -> str:
    text = README.read_text()
    start = text.index("\n## How it compares")
    end = text.index("\n## The store")
    return text[start:end]


def _cocker_commands() -> list[list[str]]:
    out = []
    for block in BLOCK_RE.findall(_sections_after_tour()):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"(^|\s)#(\s.*)?$", "", line)  # a comment (shell or YAML)
            for m in re.finditer(r"(?:^|[\s;&|(:$])cocker (.*)", line):
                text = re.split(r"\s(?:[|>;]|&&|#)\s|`", m.group(1))[0]
                out.append(shlex.split(text.replace("${{", "X").replace("}}", "X")))
    return out


def _resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    cmd: click.Command = cli
    ctx = click.Context(cli)
    rest = list(words)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(ctx, rest[0])
        assert sub is not None, f"no command {rest[0]!r} in cocker {' '.join(words)}"
        cmd, rest = sub, rest[1:]
    return cmd, rest


def test_the_sections_have_cocker_examples():
    assert len(_cocker_commands()) >= 6


@pytest.mark.parametrize("words", _cocker_commands(), ids=lambda w: " ".join(w[:3]))
def test_readme_command_exists_with_its_options(words):
    cmd, rest = _resolve(words)
    assert not isinstance(cmd, click.Group), f"cocker {' '.join(words)} names a group only"
    known = {o for p in cmd.params for o in p.opts + p.secondary_opts}
    for arg in rest:
        if arg.startswith("-") and arg != "-":
            assert arg.split("=", 1)[0] in known, f"cocker {' '.join(words)}: no option {arg}"
