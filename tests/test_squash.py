"""cocker image squash: all layers into one, or only those above a base (whiteouts kept)."""

from __future__ import annotations

import json
import tarfile

import pytest

from tests.support.builder import (
    DIR,
    OPAQUE,
    WHITEOUT,
    image_view,
    listing,
    make_tree,
    our_mounts,
    publish_layers,
)

pytestmark = pytest.mark.root


@pytest.fixture
def stacked(store, tmp_path):
    """base:1 (one layer) and app:1 = base + three layers that delete, replace and re-add."""
    t = str(tmp_path)
    base = publish_layers(store, "base", "1", [make_tree(t + "/b", {
        "a/x": "x", "a/y": "y", "b/z": "z", "c": "c", "d/q": "q", "e/f": "f", "keep": "k"})])
    app = publish_layers(store, "app", "1", [
        make_tree(t + "/l1", {"a/x": WHITEOUT, "n": "n", "c": WHITEOUT, "d": WHITEOUT}),
        make_tree(t + "/l2", {"b": OPAQUE, "b/new": "new", "c": DIR, "c/k": "k", "e": WHITEOUT,
                              "n": "n2"}),
        make_tree(t + "/l3", {"a/x": "x3", "d/r": "r", "e": DIR, "e/g": "g"}),
    ], base=base)
    return base, app


def _names(store, desc) -> list[str]:
    from registry.layer import tar_codec as layer_tar
    with store.open_blob(desc["digest"]) as f, tarfile.open(fileobj=layer_tar.open_layer(f),
                                                            mode="r|") as tf:
        return [m.name for m in tf]


def test_squash_since_keeps_base_and_whiteouts(store, stacked, cocker):
    base, app = stacked
    out = json.loads(cocker("image", "squash", "app:1", "app:2", "--since", "base:1",
                            "--json").stdout)
    assert out["reference"] == "app:2"
    assert out["layers"][0] == base.layers[0]["digest"] and len(out["layers"]) == 2
    with image_view(store, "app:1") as m:
        want = listing(m)
    with image_view(store, "app:2") as m:
        got = listing(m)
    assert got == want
    # what the upper layers deleted from the base is still deleted
    assert "a/y" in got and "d/q" not in got and "e/f" not in got and "b/z" not in got
    assert got["c"] == "DIR" and got["a/x"] == "x3" and got["n"] == "n2"
    from registry.repo import image as imagemod
    img = imagemod.load(store, "app:2")
    names = _names(store, img.layers[-1])
    assert any(n.endswith(".wh..wh..opq") for n in names)      # b, d and e hide the base's
    hist = img.config["history"]
    assert sum(1 for h in hist if not h.get("empty_layer")) == 2
    assert img.manifest["annotations"]["org.cocker.parent"] == app.digest
    assert not our_mounts(store.home)


def test_squash_all_is_one_flat_layer(store, stacked, cocker):
    cocker("image", "squash", "app:1", "flat", "--bump", "major")
    from registry.repo import image as imagemod
    img = imagemod.load(store, "flat:1.0.0")
    assert len(img.layers) == 1
    assert not any(".wh." in n for n in _names(store, img.layers[0]))
    with image_view(store, "app:1") as m:
        want = listing(m)
    with image_view(store, "flat:1.0.0") as m:
        assert listing(m) == want
    # base and source untouched
    assert len(imagemod.load(store, "app:1").layers) == 4


def test_squash_refuses_a_base_that_is_not_a_prefix(store, stacked, cocker, tmp_path):
    publish_layers(store, "other", "1", [make_tree(str(tmp_path / "o"), {"o": "o"})])
    p = cocker("image", "squash", "app:1", "app:3", "--since", "other:1", check=False)
    assert p.returncode != 0 and "not a base of" in p.stderr and "Traceback" not in p.stderr
    p = cocker("image", "squash", "app:1", "app:1", check=False)
    assert p.returncode != 0 and "already exists" in p.stderr
    assert store.get_ref("app", "3") is None
