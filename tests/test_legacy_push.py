"""`image push --legacy` of an image that is not one gzip layer: cocker flattens it into a C
cocker .cockerimage (one gzip tar of the whole tree) in its own process and uploads that."""

import subprocess
import sys

import pytest

from registry.repo.store import Store
from tests.support.sshd import make_test_image, sshd, tar_layer  # sshd: a fixture

pytestmark = pytest.mark.root


def test_legacy_push_flattens_a_layered_image(sshd, tmp_path):
    home = str(tmp_path / "store")
    make_test_image(Store(home), "tools", "3.0", [
        tar_layer({"etc/motd": b"base\n", "bin/tool": b"#!/bin/sh\n"}),
        tar_layer({"etc/motd": b"changed\n", "etc/added": b"new\n"})])
    remote = tmp_path / "c-home"
    remote.mkdir()
    p = subprocess.run([sys.executable, "-m", "cocker.main", "--home", home, "image", "push",
                        "tools:3.0", "--repo", sshd.url(str(remote)), "--legacy"],
                       capture_output=True, text=True, env=sshd.client_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    pushed = remote / "tools:3.0.cockerimage"
    out = tmp_path / "rlayer"                       # C cocker's spull: tar xzf into rlayer/
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(pushed), "-C", str(out)], check=True)
    assert (out / "etc" / "motd").read_text() == "changed\n"
    assert (out / "etc" / "added").read_text() == "new\n"
    assert (out / "bin" / "tool").is_file()
