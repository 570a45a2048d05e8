import pytest

from common.errors import InvalidReference
from registry.oci import reference as r


def test_version_order_like_software():
    vs = ["1.10.0", "1.9.1", "_", "2.0.0", "2.0.0-rc1", "2.0.0-rc10", "2.0.0-rc2", "0.9", "v1.0.0"]
    assert r.sort_versions(vs) == ["_", "0.9", "v1.0.0", "1.9.1", "1.10.0", "2.0.0-rc1",
                                   "2.0.0-rc2", "2.0.0-rc10", "2.0.0"]
    assert r.newest(["1.9.1", "1.10.0"]) == "1.10.0"
    assert r.newest(["_"]) == "_"
    assert r.newest([]) is None


@pytest.mark.parametrize("text,name,version", [
    ("busybox", "busybox", None),
    ("busybox:1.0", "busybox", "1.0"),
    ("team/app-x_y.z:2.0.0-rc1", "team/app-x_y.z", "2.0.0-rc1"),
    ("test:_", "test", "_"),
])
def test_parse(text, name, version):
    ref = r.parse(text)
    assert (ref.name, ref.version) == (name, version)
    assert str(ref) == text


def test_parse_digest():
    d = "sha256:" + "a" * 64
    ref = r.parse("x@" + d)
    assert ref.digest == d and ref.version is None


@pytest.mark.parametrize("bad", ["", "UPPER", "a//b", "/abs", "a:", "a:b:c/d", "../x", "a b",
                                 "x@sha256:short", "x@md5:" + "a" * 32, "a:" + "v" * 200, " a"])
def test_parse_rejects(bad):
    with pytest.raises(InvalidReference):
        r.parse(bad)


def test_bump():
    assert r.bump(None, "patch") == "0.0.1"
    assert r.bump("_", "minor") == "0.1.0"
    assert r.bump("1.2.3", "patch") == "1.2.4"
    assert r.bump("1.2.3", "minor") == "1.3.0"
    assert r.bump("1.2.3-rc1", "major") == "2.0.0"
    assert r.bump("1.2", "patch") == "1.2.1"
    with pytest.raises(InvalidReference):
        r.bump("1.0", "huge")
