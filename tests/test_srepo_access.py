"""Per-key permissions: the authorized_keys options srepo-server reads, and what they allow."""

from __future__ import annotations

import base64
import os

import pytest

from common.errors import UsageError
from srepo_server.access import Access, KeyFile, parse_authorized_keys, parse_line
from srepo_server.ssh_door import parse_exec

BLOB = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"k" * 36).decode()


def test_access_can():
    a = Access.parse("read,write", "team/*,tools")
    assert a.can("read", "team/app") and a.can("write", "team/a/b") and a.can("read", "tools")
    assert not a.can("read", "teamx/app") and not a.can("read", "team")
    assert not a.can("read", "tools/x") and not a.can("delete", "team/app")
    assert a.can("read") and a.can("write") and not a.can("gc")
    assert not Access.parse("all", "team/*").can("gc")  # gc touches every name's garbage
    assert Access.parse("all").can("gc") and Access.parse("all").can("delete", "x")
    ro = Access.parse(None)
    assert ro.can("read", "x") and not ro.can("write", "x")
    assert not Access(read=True).can("fly", "x")
    with pytest.raises(UsageError):
        Access.parse("read,fly")
    with pytest.raises(UsageError):
        Access.parse("read", "../x")


def test_parse_lines():
    k = parse_line(f'srepo-perms="read,write" srepo-prefixes="team/*" ssh-ed25519 {BLOB} ci@x', 3)
    assert k and k.key_type == "ssh-ed25519" and k.comment == "ci@x"
    assert k.access == Access(read=True, write=True, prefixes=("team/*",))
    # OpenSSH style: comma-separated options, quoted commas, options srepo-server ignores.
    k = parse_line(f'from="10.0.0.1,10.0.0.2",no-pty,srepo-perms="all",srepo-prefixes="a/*,b" '
                   f'ssh-ed25519 {BLOB}')
    assert k and k.access.gc and k.access.prefixes == ("a/*", "b") and k.comment == ""
    k = parse_line(f"ssh-ed25519 {BLOB} plain key with spaces, and commas")
    assert k and k.access == Access() and k.comment == "plain key with spaces, and commas"
    assert parse_line("   ") is None and parse_line("# comment") is None
    assert k.fingerprint.startswith("SHA256:")
    for bad in ("ssh-ed25519", f'srepo-perms="root" ssh-ed25519 {BLOB}', "garbage here",
                "ssh-ed25519 not-base64!!"):
        with pytest.raises(UsageError):
            parse_line(bad, 7)


def test_key_file_reloads(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"ssh-ed25519 {BLOB} first\n")
    kf = KeyFile(str(path))
    blob = base64.b64decode(BLOB)
    assert kf.lookup(blob).access == Access()
    path.write_text(f'srepo-perms="all" ssh-ed25519 {BLOB} first\n# revoked others\n')
    os.utime(path, (1, 1))  # a different mtime even within one clock tick
    assert kf.lookup(blob).access.gc
    path.write_text("this line is broken\n")
    os.utime(path, (2, 2))
    warned: list[str] = []
    kf.warn = warned.append
    assert kf.lookup(blob) is None  # a broken line is skipped, never half understood
    assert warned
    with pytest.raises(UsageError):
        KeyFile(str(tmp_path / "missing"))
    assert parse_authorized_keys("") == {}


def test_exec_commands():
    assert parse_exec("srepo") == ""
    assert parse_exec("srepo team") == "team"
    assert parse_exec("srepo /team/sub/") == "team/sub"
    assert parse_exec("srepo-server --stdio --root /anything") == ""
    assert parse_exec("/usr/bin/srepo-server --stdio --prefix team") == "team"
    for bad in ("sh -c id", "srepo ../x", "srepo a b", "srepo --evil", "", "srepo 'unterminated",
                "scp -t /", "srepo-server --root"):
        assert parse_exec(bad) is None, bad
