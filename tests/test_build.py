"""cocker image build: recipes, the step cache, reproducibility, failures that leave nothing."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from tests.support.builder import (
    busybox_image,
    cleanup_containers,
    image_view,
    listing,
    our_mounts,
    publish_layers,
)

pytestmark = pytest.mark.root

RECIPE = """\
from = "busybox:1.0"
tag = "app"

[args]
GREETING = "hello"

[config]
cmd = ["/bin/cat", "/app/msg"]
env = { MODE = "prod" }

[[step]]
run = "mkdir -p /app && echo ${GREETING} > /app/msg && rm /etc/motd"

[[step]]
copy = ["src/", "/app/src/"]
"""


@pytest.fixture
def context(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "src" / "sub").mkdir(parents=True)
    (ctx / "src" / "a.txt").write_text("A\n")
    (ctx / "src" / "sub" / "b.txt").write_text("B\n")
    (ctx / "cocker-build.toml").write_text(RECIPE)
    return ctx


def build(cocker, ctx, *args, check=True, env=None):
    p = cocker("image", "build", str(ctx), "--json", *args, check=check, env=env)
    return (json.loads(p.stdout) if p.returncode == 0 else None), p


def containers_left(store) -> list[str]:
    return [n for n in os.listdir(store.containers_dir) if not n.startswith(".")]


def test_build_twice_second_fully_cached(store, busybox_image, context, cocker,
                                         cleanup_containers):
    first, _ = build(cocker, context, "--bump", "patch")
    assert first["reference"] == "app:0.0.1" and first["cached_steps"] == 0
    assert len(first["layers"]) == 3
    blobs = set(store.all_blobs())
    second, p = build(cocker, context, "--tag", "app:0.0.2")
    assert second["cached_steps"] == 2 and second["digest"] == first["digest"]
    assert second["layers"] == first["layers"]
    assert set(store.all_blobs()) == blobs          # no new layer, config or manifest
    assert containers_left(store) == []
    with image_view(store, "app:0.0.2") as m:
        files = listing(m)
    assert files["app/msg"] == "hello\n" and files["app/src/a.txt"] == "A\n"
    assert files["app/src/sub/b.txt"] == "B\n" and "etc/motd" not in files
    from registry.repo import image as imagemod
    img = imagemod.load(store, "app:0.0.2")
    assert img.config["config"]["Cmd"] == ["/bin/cat", "/app/msg"]
    assert "MODE=prod" in img.config["config"]["Env"]
    # a changed copy source rebuilds only that step; a build arg rebuilds from its step
    (context / "src" / "a.txt").write_text("A2\n")
    third, _ = build(cocker, context, "--bump", "patch")
    assert third["cached_steps"] == 1 and third["layers"][:2] == first["layers"][:2]
    fourth, _ = build(cocker, context, "--bump", "patch", "--build-arg", "GREETING=hi")
    assert fourth["cached_steps"] == 0 and fourth["reference"] == "app:0.0.4"
    with image_view(store, "app:0.0.4") as m:
        assert listing(m)["app/msg"] == "hi\n"


def test_reproducible_across_stores(tmp_path, busybox_image, context, cocker,
                                    cleanup_containers, store):
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    first, _ = build(cocker, context, "--tag", "app:1", env=env)
    other = str(tmp_path / "home2")
    from registry.repo.store import Store
    from tests.conftest import make_busybox_rootfs
    s2 = Store(other)
    rootfs = make_busybox_rootfs(str(tmp_path / "rootfs2"))
    img2 = publish_layers(s2, "busybox", "1.0", [rootfs], config={"Cmd": ["/bin/sh"]})
    assert img2.digest == busybox_image.digest
    try:
        second, _ = build(cocker, context, "--tag", "app:1", env={**env, "COCKER_HOME": other})
        assert second["cached_steps"] == 0 and second["digest"] == first["digest"]
    finally:
        from runtime.container import lifecycle, record
        for c in record.list_containers(s2):
            lifecycle.remove(s2, c.name, force=True)


def test_failing_step_leaves_nothing(store, busybox_image, context, cocker,
                                     cleanup_containers):
    with open(context / "cocker-build.toml", "a") as f:
        f.write('\n[[step]]\nrun = "echo about to fail; exit 7"\n')
    _, p = build(cocker, context, "--tag", "app:1", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "about to fail" in p.stderr and "exit code 7" in p.stderr
    assert store.list_refs("app") == []
    assert containers_left(store) == []
    assert not our_mounts(store.home)


def test_squash_recipe_makes_one_layer(store, busybox_image, context, cocker,
                                       cleanup_containers):
    text = (context / "cocker-build.toml").read_text().replace('tag = "app"',
                                                               'tag = "app"\nsquash = true')
    (context / "cocker-build.toml").write_text(text)
    out, _ = build(cocker, context, "--tag", "app:1")
    assert len(out["layers"]) == 2
    with image_view(store, "app:1") as m:
        files = listing(m)
    assert files["app/msg"] == "hello\n" and "etc/motd" not in files
    again, _ = build(cocker, context, "--tag", "app:2")
    assert again["digest"] == out["digest"]


@pytest.mark.parametrize("body, line, words", [
    ('from = "busybox:1.0"\ntag = "x:1"\n\n[[step]]\nrun = "true"\n\n[[step]]\nrnu = "x"\n',
     8, "unknown key 'rnu'"),
    ('from = "busybox:1.0"\ntag = "x:1"\n[config]\nworkdir = "relative"\n', 4, "absolute"),
    ('from = "busybox:1.0"\ntag = "x:1"\nsquash = "yes"\n', 3, "true or false"),
    ('from = "busybox:1.0"\n[[step]]\ncopy = { from = "a", to = "/b", mode = "999" }\n', 3,
     "octal"),
    ('from = "busybox:1.0"\n[[step]]\nrun = "x"\ncopy = ["a", "/b"]\n', 4, "exactly one"),
    ('from = "busybox:1.0"\nbogus = 1\n', 2, "unknown key 'bogus'"),
    ('from = "busybox:1.0"\n[[step]\n', 2, "invalid TOML"),
    ('from = "busybox:1.0"\n[config.env]\nOK = "1"\n"NOT OK" = "2"\n', 4, "variable name"),
    ('from = "busybox:1.0"\n[[step]]\nrun = "true"\n[[step]]\nenv = { A = "1" }\n'
     'net = "host"\n', 6, "only goes with run"),
])
def test_recipe_errors_name_the_line(store, tmp_path, cocker, body, line, words):
    (tmp_path / "cocker-build.toml").write_text(body)
    p = cocker("image", "build", str(tmp_path), "--tag", "x:1", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert f"cocker-build.toml:{line}:" in p.stderr and words in p.stderr, p.stderr


def test_copy_outside_the_context_or_missing_is_refused(store, busybox_image, tmp_path,
                                                        cocker):
    ctx = tmp_path / "c"
    ctx.mkdir()
    (tmp_path / "secret").write_text("s")
    os.symlink(str(tmp_path), ctx / "up")
    for src, words in (("../secret", "outside the build context"),
                       ("up/secret", "outside the build context"),
                       ("missing.txt", "not found")):
        (ctx / "cocker-build.toml").write_text(textwrap.dedent(f"""\
            from = "busybox:1.0"
            [[step]]
            copy = ["{src}", "/x"]
            """))
        p = cocker("image", "build", str(ctx), "--tag", "x:1", check=False)
        assert p.returncode != 0 and words in p.stderr and "cocker-build.toml:2:" in p.stderr
    assert store.list_refs("x") == []


def test_copy_into_existing_dirs_keeps_their_attributes(store, busybox_image, tmp_path, cocker):
    ctx = tmp_path / "c"
    ctx.mkdir()
    (ctx / "f").write_text("F\n")
    (ctx / "cocker-build.toml").write_text(textwrap.dedent("""\
        from = "busybox:1.0"
        [[step]]
        copy = ["f", "/tmp"]
        [[step]]
        copy = { from = "f", to = "/tmp/sub/", mode = "0700", owner = "1000:1000" }
        """))
    cocker("image", "build", str(ctx), "--tag", "cp:1")
    with image_view(store, "cp:1") as m:
        assert listing(m)["tmp/f"] == "F\n"
        assert oct(os.stat(os.path.join(m, "tmp")).st_mode & 0o7777) == "0o1777"
        st = os.stat(os.path.join(m, "tmp/sub/f"))
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o700, 1000, 1000)
