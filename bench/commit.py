#!/usr/bin/env python3
"""Benchmark `cocker container commit` against `tar -c | zstd -T0` of the same upper dir
(and `buildah commit` of the same change, when buildah can run here).

A busybox container gets ~500 MB of mixed files in its overlay upper dir (incompressible
8 MB files, compressible 1 MB text files, and many small files), then, in one run:
  * cocker container commit NAME bench/commit:N    (the real CLI: pack, zstd, both digests,
                                                    blob ingest, config, manifest, ref)
  * tar -C UPPER -cf - . | zstd -T0 -3 > FILE      (the floor: same bytes, same compressor)
  * buildah commit of a working container holding the same files (its own storage)
and prints the times and the ratios (goal: cocker within 1.2x of tar | zstd).

    python3 bench/commit.py [--size-mb 500] [--no-buildah]
Needs root.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

WORDS = ("alpha beta gamma delta epsilon zeta theta lambda container image layer version "
         "registry commit overlay upper lower whiteout digest manifest config").split()


def fill(root: str, size_mb: int, seed: int = 7) -> int:
    """Mixed content: 40% random, 40% text-like, 20% small files. Returns bytes written."""
    rnd = random.Random(seed)
    total = 0
    budget = size_mb << 20
    d = os.path.join(root, "srv", "data")
    os.makedirs(os.path.join(d, "bin"), exist_ok=True)
    os.makedirs(os.path.join(d, "text"), exist_ok=True)
    os.makedirs(os.path.join(d, "small"), exist_ok=True)
    i = 0
    while total < budget * 0.4:
        with open(os.path.join(d, "bin", f"blob{i:04d}"), "wb") as f:
            f.write(os.urandom(8 << 20))
        total += 8 << 20
        i += 1
    i = 0
    while total < budget * 0.8:
        line = " ".join(rnd.choice(WORDS) for _ in range(12)) + f" {rnd.random()}\n"
        chunk = (line * ((1 << 20) // len(line) + 1))[: 1 << 20]
        with open(os.path.join(d, "text", f"t{i:04d}.txt"), "w") as f:
            f.write(chunk)
        total += len(chunk)
        i += 1
    i = 0
    while total < budget:
        n = rnd.randint(4 << 10, 64 << 10)
        sub = os.path.join(d, "small", f"d{i // 200:03d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(n // 2) + bytes(n - n // 2))
        total += n
        i += 1
    return total


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, **kw)


def timed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def bench_buildah(work: str, rootfs_src: str) -> float | None:
    if not shutil.which("buildah"):
        print("buildah: not installed, skipped")
        return None
    root, runroot = os.path.join(work, "bh-root"), os.path.join(work, "bh-run")
    base = ["buildah", "--root", root, "--runroot", runroot, "--storage-driver", "overlay"]
    try:
        ctr = run(base + ["from", "scratch"], text=True).stdout.strip()
        mnt = run(base + ["mount", ctr], text=True).stdout.strip()
        # the same files as the cocker container's upper dir
        run(["cp", "-a", rootfs_src + "/.", mnt])
        t = timed(lambda: run(base + ["commit", "--format", "oci", ctr, "bench-commit:1"]))
        run(base + ["umount", ctr])
        return t
    except (subprocess.CalledProcessError, OSError) as e:
        err = getattr(e, "stderr", b"") or b""
        print(f"buildah: failed ({err.decode(errors='replace').strip()[:200] or e}), skipped")
        return None
    finally:
        subprocess.run(base + ["rm", "--all"], capture_output=True)
        subprocess.run(base + ["rmi", "--all", "--force"], capture_output=True)
        subprocess.run(["umount", "-R", os.path.join(root, "overlay")], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--no-buildah", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/commit.py needs root")
    from registry.repo.store import Store
    from runtime.container import lifecycle, record
    from runtime.container.spec import ContainerSpec
    from tests.conftest import make_busybox_rootfs
    from tests.support.builder import publish_layers

    work = tempfile.mkdtemp(prefix="cocker-bench-commit.", dir="/var/tmp")
    home = os.path.join(work, "home")
    env = dict(os.environ, COCKER_HOME=home, COCKER_QUIET="1")
    store = Store(home)
    name = f"bench{os.getpid()}"
    try:
        rootfs = make_busybox_rootfs(os.path.join(work, "rootfs"))
        publish_layers(store, "busybox", "1.0", [rootfs], config={"Cmd": ["/bin/sh"]})
        spec = ContainerSpec(image="busybox:1.0", name=name, net="none",
                                        command=["/bin/true"])
        code, _ = lifecycle.run_captured(store, spec, rm=False)
        assert code == 0
        c = record.load(store, name)
        n = fill(c.upper_dir, args.size_mb)
        print(f"upper dir: {n / 1e6:.0f} MB of mixed files")
        out = os.path.join(work, "upper.tar.zst")
        t_tar = timed(lambda: run(["sh", "-c", f"tar -C {c.upper_dir} -cf - . | zstd -q -T0 -3 "
                                              f"-o {out}"]))
        tar_size = os.path.getsize(out)
        os.unlink(out)
        cli = [sys.executable, "-m", "cocker.main", "container", "commit", name]
        t_cocker = timed(lambda: run(cli + ["bench/commit:1"], env=env, cwd=os.path.dirname(HERE)))
        from registry.repo import image as imagemod
        layer = imagemod.load(store, "bench/commit:1").layers[-1]
        t_tar2 = timed(lambda: run(["sh", "-c", f"tar -C {c.upper_dir} -cf - . | zstd -q -T0 -3 "
                                               f"-o {out}"]))
        t_cocker2 = timed(lambda: run(cli + ["bench/commit:2"], env=env, cwd=os.path.dirname(HERE)))
        from registry.layer import tar_codec as layer_tar

        def pack_only() -> None:
            with open(out, "wb") as f:
                layer_tar.pack_dir(c.upper_dir, f, overlay_upper=True)
        t_pack = timed(pack_only)
        os.unlink(out)
        t_bh = None if args.no_buildah else bench_buildah(work, c.upper_dir)
        print(f"{'':28}{'seconds':>9}{'size MB':>10}")
        print(f"{'tar -c | zstd -T0 -3':28}{min(t_tar, t_tar2):9.2f}{tar_size / 1e6:10.1f}")
        print(f"{'cocker container commit':28}{min(t_cocker, t_cocker2):9.2f}"
              f"{layer['size'] / 1e6:10.1f}")
        print(f"{'  of which codec pack_dir':28}{t_pack:9.2f}   (registry.layer_tar, in-process)")
        if t_bh is not None:
            print(f"{'buildah commit (oci)':28}{t_bh:9.2f}")
        print(f"runs: tar {t_tar:.2f}/{t_tar2:.2f}  cocker {t_cocker:.2f}/{t_cocker2:.2f}")
        print(f"ratio cocker / tar|zstd: {min(t_cocker, t_cocker2) / min(t_tar, t_tar2):.2f}x "
              "(goal <= 1.2x)")
        if t_bh is not None:
            print(f"ratio cocker / buildah commit: {min(t_cocker, t_cocker2) / t_bh:.2f}x")
    finally:
        try:
            lifecycle.remove(store, name, force=True)
        except Exception:  # noqa: BLE001 (the bench's teardown goes on whatever this raises)
            pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
