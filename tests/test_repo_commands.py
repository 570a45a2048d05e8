"""`cocker repo add/ls/rm/gc`, `cocker image copy` and `image rm --repo` through a real sshd."""

from __future__ import annotations

import json
import os

import pytest

from registry.repo.layout import LayoutRepo
from registry.repo.store import Store
from tests.conftest import run_cocker
from tests.support.sshd import make_test_image, scripts_dir, sshd, tar_layer


@pytest.fixture
def env(sshd):
    e = sshd.client_env()
    e["COCKER_QUIET"] = "1"
    return e


def cli(home, env, *args, check=True):
    return run_cocker("--home", home, *args, check=check, env=env)


def test_repo_add_ls_rm_and_default(tmp_path, sshd, env):
    home = str(tmp_path / "home")
    url = sshd.url(str(tmp_path / "remote")) + "?mode=sftp"
    p = cli(home, env, "repo", "add", "bad name", url, check=False)
    assert p.returncode != 0 and "invalid repo name" in p.stderr
    p = cli(home, env, "repo", "add", "r1", "not-a-url", check=False)
    assert p.returncode != 0 and "not a repository URL" in p.stderr
    cli(home, env, "repo", "add", "r1", url, "--init")  # first one becomes the default
    cli(home, env, "repo", "add", "local", str(tmp_path / "dirrepo"))
    rows = json.loads(cli(home, env, "repo", "ls", "--json").stdout)
    assert [(r["name"], r["default"]) for r in rows] == [("local", False), ("r1", True)]
    assert os.path.isfile(tmp_path / "remote" / "oci-layout")  # --init made it
    p = cli(home, env, "repo", "add", "r1", url, check=False)
    assert p.returncode != 0 and "already configured" in p.stderr
    make_test_image(Store(home), "app", "1.0", [tar_layer({"a": b"a"})])
    cli(home, env, "image", "push", "app:1.0")  # to the default repo
    assert [str(r) for r in LayoutRepo(str(tmp_path / "remote")).list_refs()] == ["app:1.0"]
    cli(home, env, "repo", "add", "local2", str(tmp_path / "dirrepo2"), "--default", "--init")
    cli(home, env, "image", "push", "app:1.0")
    assert [str(r) for r in LayoutRepo(str(tmp_path / "dirrepo2")).list_refs()] == ["app:1.0"]
    cli(home, env, "repo", "rm", "local2")
    p = cli(home, env, "image", "push", "app:1.0", check=False)
    assert p.returncode != 0 and "no repository given" in p.stderr
    p = cli(home, env, "repo", "rm", "local2", check=False)
    assert p.returncode != 0 and "no repo named" in p.stderr


def test_copy_between_repos_and_remote_rm(tmp_path, sshd, env):
    home = str(tmp_path / "home")
    src = sshd.url(str(tmp_path / "remote")) + "?mode=sftp"
    make_test_image(Store(home), "app", "1.0", [tar_layer({"a": os.urandom(70000)})])
    make_test_image(Store(home), "app", "1.1", [tar_layer({"a": os.urandom(70000)})])
    cli(home, env, "image", "push", "app", "--all-versions", "--repo", src, "--init")
    usb = str(tmp_path / "usb")
    out = json.loads(cli(home, env, "image", "copy", "app", "--all-versions", "--from", src,
                         "--to", f"file://{usb}", "--init", "--json").stdout)
    assert [r["reference"] for r in out] == ["app:1.0", "app:1.1"]
    assert LayoutRepo(usb).fsck() == []
    cli(home, env, "image", "rm", "--repo", src, "app:1.0")
    remote = LayoutRepo(str(tmp_path / "remote"))
    assert [str(r) for r in remote.list_refs()] == ["app:1.1"]
    p = cli(home, env, "image", "rm", "--repo", src, "app:1.0", check=False)
    assert p.returncode != 0 and "not found" in p.stderr


@pytest.mark.parametrize("mode", ["sftp", "smart"])
def test_remote_gc_spares_young_blobs_and_refs(tmp_path, sshd, env, mode):
    home = str(tmp_path / "home")
    url = sshd.url(str(tmp_path / "remote")) + f"?mode={mode}"
    if mode == "smart":
        url += "&command=" + os.path.join(scripts_dir(), "srepo-server")
    keep = make_test_image(Store(home), "app", "1.0", [tar_layer({"k": os.urandom(5000)})])
    drop = make_test_image(Store(home), "app", "0.9", [tar_layer({"d": os.urandom(5000)})])
    cli(home, env, "image", "push", "app", "--all-versions", "--repo", url, "--init")
    cli(home, env, "image", "rm", "--repo", url, "app:0.9")
    # A long grace period spares the just-orphaned blobs (a push in flight may need them).
    out = cli(home, env, "repo", "gc", url).stdout
    assert "removed 0 blob(s)" in out
    # Age them past a short grace: now they go, and the live image stays complete.
    blobs = tmp_path / "remote" / "blobs" / "sha256"
    for f in blobs.iterdir():
        os.utime(f, (1, 1))
    out = cli(home, env, "repo", "gc", url, "--grace", "60").stdout
    assert "removed 3 blob(s)" in out, out  # layer, config, manifest of 0.9
    remote = LayoutRepo(str(tmp_path / "remote"))
    assert remote.fsck() == [] and [str(r) for r in remote.list_refs()] == ["app:1.0"]
    assert not remote.has_blob(drop.digest) and remote.has_blob(keep.digest)


@pytest.mark.parametrize("url", ["http://", "https://:5000", "srepo://", "srepo://h/BAD",
                                 "ssh://", "http://h:99x/team"])
def test_repo_add_refuses_malformed_urls(home, cocker, url):
    p = cocker("repo", "add", "r1", url, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert "r1" not in cocker("repo", "ls").stdout  # nothing was configured
