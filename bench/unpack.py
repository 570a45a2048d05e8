#!/usr/bin/env python3
"""Unpack a ~500 MB zstd layer with cocker's safe unpacker and with `tar --zstd -x`.

    python3 bench/unpack.py [--size-mb 500] [--repeat 3] [--workdir DIR]

The tree of bench/pack.py is generated once under --workdir and packed by cocker; each
tool then extracts the layer into a fresh directory with a warm page cache; the best of
--repeat runs counts. cocker's unpack checks every path component, owner, the byte and
ratio bounds (registry/layer/limits.py) and hashes the diff_id on the way; tar trusts
the archive. Prints wall times and cocker's ratio to tar.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.pack import generate  # noqa: E402
from registry.layer import tar_codec  # noqa: E402


def best_of(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        t = run()
        times.append(t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="cocker-bench-unpack.")
    tree = os.path.join(work, "tree")
    if not os.path.isdir(tree):
        generate(tree, a.size_mb)
    layer = os.path.join(work, "layer.tar.zst")
    with open(layer, "wb") as out:
        packed = tar_codec.pack_dir(tree, out)
    print(f"layer: {packed.size / 1e6:.0f} MB zstd, {packed.uncompressed_size / 1e6:.0f} MB tar")

    def fresh() -> str:
        d = os.path.join(work, "out")
        shutil.rmtree(d, ignore_errors=True)
        os.mkdir(d)
        return d

    def cocker() -> float:
        d = fresh()
        t0 = time.perf_counter()
        with open(layer, "rb") as f:
            tar_codec.unpack(f, d, whiteouts="apply")
        return time.perf_counter() - t0

    def tar() -> float:
        d = fresh()
        t0 = time.perf_counter()
        subprocess.run(["tar", "--zstd", "-xf", layer, "-C", d], check=True)
        return time.perf_counter() - t0

    c = best_of(a.repeat, cocker)
    t = best_of(a.repeat, tar)
    print(f"cocker unpack      {c:6.2f} s")
    print(f"tar --zstd -x      {t:6.2f} s")
    print(f"ratio cocker/tar   {c / t:6.2f}x")
    shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
