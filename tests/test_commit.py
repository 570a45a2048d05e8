"""cocker container commit: a container's changes become one new layer, verified by booting."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.builder import busybox_image, cleanup_containers, our_mounts

pytestmark = pytest.mark.root

CHANGE_SCRIPT = ("echo added > /added; echo changed > /etc/passwd; rm /etc/group; "
                 "rm -rf /var/www; mkdir /var/www; echo new > /var/www/new; "
                 "mkdir -p /opt/d && echo deep > /opt/d/f")


def run_in(store, image: str, script: str, name: str | None = None, rm: bool = True):
    from runtime.container import lifecycle
    from runtime.container.spec import ContainerSpec
    spec = ContainerSpec(image=image, name=name, net="none",
                                    command=["/bin/sh", "-c", script])
    code, out = lifecycle.run_captured(store, spec, rm=rm)
    return code, out.decode()


def test_commit_added_changed_deleted_and_replaced_dir(store, busybox_image, cocker,
                                                       cleanup_containers):
    name = f"cm{os.getpid()}"
    code, _ = run_in(store, "busybox:1.0", CHANGE_SCRIPT, name=name, rm=False)
    assert code == 0
    out = json.loads(cocker("container", "commit", name, "bb", "--bump", "minor", "-m", "web",
                            "--author", "Ann <ann@example.org>", "--change", "ENV MODE=prod",
                            "--change", 'CMD ["/bin/cat", "/added"]', "--json").stdout)
    assert out["reference"] == "bb:0.1.0" and out["method"] == "upper"
    assert out["layers"][:1] == [layer["digest"] for layer in busybox_image.layers]
    assert len(out["layers"]) == 2
    # boot the new version: every kind of change is there, deleted files stay deleted
    code, text = run_in(store, "bb:0.1.0",
                        "cat /added /etc/passwd /var/www/new /opt/d/f; ls /var/www; "
                        "test -e /etc/group && echo GROUP; echo MODE=$MODE")
    assert code == 0, text
    lines = text.split()
    assert lines[:4] == ["added", "changed", "new", "deep"]
    assert "index.html" not in text and "GROUP" not in text and "MODE=prod" in text
    # the base is untouched, the container is still there
    code, text = run_in(store, "busybox:1.0", "cat /var/www/index.html; test -e /added || echo NO")
    assert "hello from cocker" in text or "NO" in text
    assert "NO" in text
    assert store.get_ref("busybox", "1.0") == busybox_image.digest
    from registry.repo import image as imagemod
    from runtime.container import record
    assert record.load(store, name).state() == "exited"
    img = imagemod.load(store, "bb:0.1.0")
    assert img.config["config"]["Cmd"] == ["/bin/cat", "/added"]
    h = img.config["history"][-1]
    assert h["comment"] == "web" and h["author"] == "Ann <ann@example.org>"
    assert img.manifest["annotations"]["org.cocker.parent"] == busybox_image.digest
    # the same name:version again is refused; nothing changes
    p = cocker("container", "commit", name, "bb:0.1.0", check=False)
    assert p.returncode != 0 and "already exists" in p.stderr and "Traceback" not in p.stderr


def test_commit_running_needs_pause(store, busybox_image, cocker, cleanup_containers):
    from runtime.container import lifecycle, record
    from runtime.container.spec import ContainerSpec
    name = f"cr{os.getpid()}"
    spec = ContainerSpec(image="busybox:1.0", name=name, net="none",
                                    command=["/bin/sh", "-c", "echo live > /live; sleep 600"])
    lifecycle.run(store, spec, detach=True)
    for _ in range(100):
        if os.path.exists(os.path.join(store.containers_dir, name, "upper", "live")):
            break
        import time
        time.sleep(0.05)
    p = cocker("container", "commit", name, "live:1", check=False)
    assert p.returncode != 0 and "--pause" in p.stderr
    assert store.get_ref("live", "1") is None
    cocker("container", "to-image", name, "live:1", "--pause")
    assert record.load(store, name).state() == "running"
    code, text = run_in(store, "live:1", "cat /live")
    assert text.strip() == "live"


def test_commit_nothing_changed_and_config_only(store, busybox_image, cocker,
                                                cleanup_containers):
    name = f"cn{os.getpid()}"
    code, _ = run_in(store, "busybox:1.0", "true", name=name, rm=False)
    p = cocker("container", "commit", name, "same:1", check=False)
    assert p.returncode != 0 and "no changes" in p.stderr
    assert store.get_ref("same", "1") is None
    out = json.loads(cocker("container", "commit", name, "same:1", "--change", "WORKDIR /tmp",
                            "--json").stdout)
    assert out["method"] == "config only" and out["new_layer"] is None
    assert out["layers"] == [layer["digest"] for layer in busybox_image.layers]
    p = cocker("container", "commit", name, "same:2", "--change", "BOGUS x", check=False)
    assert p.returncode != 0 and "unknown instruction" in p.stderr


def test_commit_falls_back_to_a_diff_with_redirect_dir_and_metacopy(store, busybox_image,
                                                                      cocker, cleanup_containers):
    """An upper dir written with redirect_dir/metacopy on is not a plain diff: commit must
    diff the merged view against the lower layers."""
    from runtime.container import record
    name = f"cd{os.getpid()}"
    code, _ = run_in(store, "busybox:1.0", "echo x > /x", name=name, rm=False)
    c = record.load(store, name)
    mnt = os.path.join(c.dir, "manual")
    os.mkdir(mnt)
    opts = (f"lowerdir={':'.join(c.lower_dirs)},upperdir={c.upper_dir},workdir={c.work_dir},"
            "redirect_dir=on,metacopy=on")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, mnt], check=True)
    try:
        os.rename(os.path.join(mnt, "var/www"), os.path.join(mnt, "var/web2"))
        os.chmod(os.path.join(mnt, "etc/passwd"), 0o600)
    finally:
        subprocess.run(["umount", mnt], check=True)
        os.rmdir(mnt)
    out = json.loads(cocker("container", "commit", name, "moved:1", "--json").stdout)
    assert out["method"].startswith("diff")
    code, text = run_in(store, "moved:1", "cat /var/web2/index.html /etc/passwd /x; "
                        "ls /var; stat -c %a /etc/passwd")
    assert code == 0, text
    assert "hello from cocker" in text and "root:x:0:0" in text and "www" not in text.split()
    assert text.split()[-1] == "600"
    assert not our_mounts(store.home)


def test_commit_refuses_a_layer_the_image_already_has(store, busybox_image, cocker,
                                                      cleanup_containers):
    """Changes identical to a layer below would stack that layer twice: overlay refuses
    such an image at run (ELOOP), so commit refuses it first, in one line."""
    same = "echo same > /dup && touch -d @1000000000 /dup"
    code, _ = run_in(store, "busybox:1.0", same, name=f"d1{os.getpid()}", rm=False)
    assert code == 0
    cocker("container", "commit", f"d1{os.getpid()}", "dup:1")
    code, _ = run_in(store, "dup:1", "rm /dup && " + same, name=f"d2{os.getpid()}", rm=False)
    assert code == 0
    p = cocker("container", "commit", f"d2{os.getpid()}", "dup:2", check=False)
    assert p.returncode == 1 and "layer 2" in p.stderr and "twice" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert store.get_ref("dup", "2") is None
