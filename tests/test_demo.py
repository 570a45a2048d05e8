"""The README's main job: `cocker demo` runs every step of the workflow for real."""

import pytest


@pytest.mark.root
def test_demo_runs_end_to_end(home, cocker):
    p = cocker("--home", home, "demo", timeout=300)
    assert "demo finished: all steps passed" in p.stdout
    for step in ("image import", "container commit", "image build", "image push",
                 "image pull", "srepo-server --root"):
        assert step in p.stdout
    # it cleans up after itself: no demo images or containers stay in the store
    assert "demo/" not in cocker("--home", home, "image", "ls").stdout
    assert "demo-edit" not in cocker("--home", home, "container", "ls", "--all").stdout
