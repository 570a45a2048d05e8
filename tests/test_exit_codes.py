"""One table from exception classes to exit codes, documented in `cocker --help`."""

from __future__ import annotations

import socket

import pytest

from common import errors, exit_codes
from registry.layer import limits
from tests.support.codec import entry, make_tar
from tests.test_layer_bounds import MiB, zero_bomb


def one_line_error(p) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def test_help_documents_the_exit_codes(cocker):
    out = cocker("--help").stdout
    assert "Exit status" in out and "3 remote" in out and "4 integrity" in out


@pytest.mark.parametrize("exc,code", [
    (errors.UsageError("x"), 2), (errors.InvalidReference("x"), 2),
    (errors.TransportError("x"), 3), (errors.AuthError("x"), 3),
    (errors.DigestMismatch("x"), 4), (errors.CorruptImage("x"), 4), (errors.UnsafeArchive("x"), 4),
    (errors.NotFound("x"), 1), (errors.Conflict("x"), 1), (errors.CockerError("x"), 1)])
def test_the_table(exc, code):
    assert exit_codes.exit_code_for(exc) == code


def test_usage_error_exits_2(home, cocker):
    p = cocker("image", "inspect", "NOT A REF", check=False)
    assert p.returncode == 2
    one_line_error(p)


def test_hostile_archive_exits_4(home, cocker, tmp_path):
    path = tmp_path / "evil.tar"
    path.write_bytes(make_tar([entry("../escape", data=b"x")]))
    p = cocker("image", "import", str(path), "evil:1", check=False)
    assert p.returncode == 4
    assert "'..'" in one_line_error(p)


def test_unreachable_remote_exits_3(home, cocker):
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        p = cocker("image", "pull", "x:1", "--repo", f"ssh://127.0.0.1:{port}/srv/repo",
                   check=False)
    assert p.returncode == 3
    assert f"127.0.0.1 port {port}" in one_line_error(p)


def test_allow_ratio_option(home, cocker, tmp_path):
    bomb = tmp_path / "bomb.tar.zst"
    bomb.write_bytes(zero_bomb(24 * MiB))
    env = {limits.RATIO_GRACE: "4M", limits.ALLOW_RATIO: ""}
    p = cocker("image", "import", str(bomb), "bomb:1", check=False, env=env)
    assert p.returncode == 4
    assert "--allow-ratio" in one_line_error(p)
    cocker("--allow-ratio", "image", "import", str(bomb), "bomb:1", env=env)
