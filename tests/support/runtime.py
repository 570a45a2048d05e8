"""Fixtures for runtime tests: one store per test session holding a busybox image (and a
50-layer one made on demand), unique container names, and leftovers checks."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid

import pytest

from tests.conftest import make_busybox_rootfs

CGROUP_ROOT = "/sys/fs/cgroup"


def build_image(store, name: str, version: str, layer_dirs: list[str], config: dict | None = None):
    from registry.layer import tar_codec as layer_tar
    from registry.oci import manifest as oci
    from registry.repo import image as imagemod
    packed = [layer_tar.pack_into(store, d, compression="zstd") for d in layer_dirs]
    cfg = oci.new_config([p.diff_id for p in packed])
    cfg["config"] = dict(config or {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin:/sbin:/usr/bin"]})
    return imagemod.publish(store, name, version, cfg, [p.descriptor() for p in packed], force=True)


def build_busybox(store, name: str = "busybox", version: str = "1.0"):
    with tempfile.TemporaryDirectory() as tmp:
        root = make_busybox_rootfs(os.path.join(tmp, "rootfs"))
        return build_image(store, name, version, [root])


def build_many_layers(store, n: int = 50, name: str = "layered", version: str = "1.0"):
    """busybox at the bottom, then n-1 layers that each add one file."""
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [make_busybox_rootfs(os.path.join(tmp, "base"))]
        for i in range(1, n):
            d = os.path.join(tmp, f"l{i}")
            os.makedirs(os.path.join(d, "layers"))
            with open(os.path.join(d, "layers", str(i)), "w") as f:
                f.write(f"{i}\n")
            dirs.append(d)
        return build_image(store, name, version, dirs)


@pytest.fixture(scope="session")
def rt_home(tmp_path_factory) -> dict:
    from registry.repo.store import Store
    from tests.support.net import unique, unique_subnet
    home = str(tmp_path_factory.mktemp("rt") / "home")
    build_busybox(Store(home))
    # our own default bridge and subnet: parallel test runs never share cocker0
    return {"COCKER_HOME": home, "COCKER_BRIDGE": unique("ckr"),
            "COCKER_BRIDGE_SUBNET": unique_subnet()}


@pytest.fixture
def rt(rt_home, monkeypatch):
    """(store, cli): the shared runtime store exported as COCKER_HOME, and a CLI runner."""
    from registry.repo.store import Store
    from tests.conftest import run_cocker
    for k, v in rt_home.items():
        monkeypatch.setenv(k, v)
    return Store(rt_home["COCKER_HOME"]), run_cocker


@pytest.fixture
def cname(rt):
    """A unique container name; the container and everything it had are checked gone after."""
    store, _ = rt
    name = f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    force_remove(store, name)
    assert_no_leftovers(store, name)


def force_remove(store, name: str) -> None:
    from common.errors import CockerError
    from runtime.container import lifecycle
    try:
        lifecycle.remove(store, name, force=True)
    except CockerError:
        pass


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


def cgroup_dirs(name: str) -> list[str]:
    out = []
    for ctrl in os.listdir(CGROUP_ROOT):
        p = os.path.join(CGROUP_ROOT, ctrl, "cocker", name)
        if os.path.isdir(p):
            out.append(p)
    p = os.path.join(CGROUP_ROOT, "cocker", name)
    if os.path.isdir(p):
        out.append(p)
    return out


def assert_no_leftovers(store, name: str) -> None:
    cdir = os.path.join(store.containers_dir, name)
    assert not os.path.exists(cdir), f"{cdir} left behind"
    assert mounts_under(cdir) == [], mounts_under(cdir)
    assert cgroup_dirs(name) == [], cgroup_dirs(name)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert name not in links


def cli_path() -> list[str]:
    return [sys.executable, "-m", "cocker.main"]
