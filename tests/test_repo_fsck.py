"""Repositories are private and fsck checks what descriptors say (issue 14 items 2 and 4):
files 0600 and directories 0700 on every backend that writes them; fsck reports anything
wider, and `--fix` narrows it; fsck re-checks descriptor sizes and media types."""

from __future__ import annotations

import os
import stat

import pytest

from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci.reference import parse
from registry.repo.copy import copy
from registry.repo.image import publish
from registry.repo.layout import LayoutRepo
from registry.repo.store import Store
from registry.transports.remotes import open_repo
from tests.conftest import run_cocker
from tests.support.sshd import scripts_dir, sshd


def make_image(repo, name: str, version: str) -> str:
    data = os.urandom(5000)
    repo.put_blob_bytes(digestmod.of_bytes(data), data)
    desc = oci.descriptor(oci.LAYER_TAR, data)
    return publish(repo, name, version, oci.new_config([desc["digest"]]), [desc]).digest


def modes(root: str) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for n in dirnames + files:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = stat.S_IMODE(os.lstat(p).st_mode)
    return out


@pytest.mark.parametrize("kind", ["dir", "sftp", "smart"])
def test_what_a_push_writes_is_private(tmp_path, sshd, kind):
    src = LayoutRepo(str(tmp_path / "src"), create=True)
    make_image(src, "app", "1")
    root = str(tmp_path / "remote")
    url = root if kind == "dir" else sshd.url(root) + f"?mode={kind}"
    if kind == "smart":
        url += "&command=" + os.path.join(scripts_dir(), "srepo-server")
    kw = {} if kind == "dir" else sshd.connect_kwargs()
    with open_repo(url, init=True, **kw) as dst:
        copy(parse("app:1"), src, dst)
    wide = {p: f"{m:04o}" for p, m in modes(root).items() if m & 0o077 and not (
        os.path.isdir(os.path.join(root, p)) and not m & 0o067)}
    assert wide == {}
    assert LayoutRepo(root).fsck() == []


def test_fsck_reports_wide_permissions_and_fix_narrows_them(tmp_path):
    home = str(tmp_path / "home")
    store = Store(home)
    d = make_image(store, "app", "1")
    blob = store.blob_path(d)
    os.chmod(blob, 0o644)
    os.chmod(os.path.join(home, "refs"), 0o755)
    p = run_cocker("--home", home, "image", "fsck", check=False)
    assert p.returncode == 1
    assert "0644" in p.stdout and "0755" in p.stdout and "--fix" in p.stdout
    p = run_cocker("--home", home, "image", "fsck", "--fix")
    assert "narrowed" in p.stdout
    assert stat.S_IMODE(os.stat(blob).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(home, "refs")).st_mode) == 0o710 & 0o755
    assert run_cocker("--home", home, "image", "fsck").returncode == 0


def test_fsck_checks_descriptor_sizes_and_index_media_types(tmp_path):
    repo = LayoutRepo(str(tmp_path / "r"), create=True)
    data = os.urandom(3000)
    repo.put_blob_bytes(digestmod.of_bytes(data), data)
    cfg = oci.canonical_json(oci.new_config([digestmod.of_bytes(data)]))
    repo.put_blob_bytes(digestmod.of_bytes(cfg), cfg)
    lying = oci.descriptor(oci.LAYER_TAR, digestmod.of_bytes(data), 2999)
    manifest = oci.canonical_json(oci.new_manifest(cfg, [lying]))
    md = digestmod.of_bytes(manifest)
    repo.put_blob_bytes(md, manifest)
    repo.put_ref("bad", "1", md)
    index = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": [
        oci.descriptor(oci.DOCKER_MANIFEST, manifest)]})
    repo.put_blob_bytes(digestmod.of_bytes(index), index)
    repo.put_ref("multi", "1", digestmod.of_bytes(index))
    problems = repo.fsck()
    assert any("bad:1" in p and "2999 bytes" in p and "3000" in p for p in problems)
    assert any("multi:1" in p and oci.DOCKER_MANIFEST in p and oci.MANIFEST in p
               for p in problems)
