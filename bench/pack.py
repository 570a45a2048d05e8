#!/usr/bin/env python3
"""Pack a generated ~500 MB mixed tree with cocker, `tar -c | zstd -T0` and `umoci repack`.

    python3 bench/pack.py [--size-mb 500] [--repeat 3] [--workdir DIR] [--no-umoci]

The tree (compressible text, random bytes, many small files, symlinks) is generated once
under --workdir and reused. Each tool packs it with a warm page cache; the best of
--repeat runs counts. Prints wall times, output sizes and cocker's ratio to each peer.
Goal: cocker within 1.2x of tar | zstd -T0.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua container image layer overlay "
         "registry version digest manifest config network bridge volume kernel process "
         "thread socket buffer cache python golang rust shell script build deploy").split()


def generate(root: str, size_mb: int, seed: int = 42) -> None:
    """40% text in medium files, 40% random bytes in big files, 20% small files."""
    rng = random.Random(seed)
    total = size_mb << 20
    pool = " ".join(rng.choice(WORDS) + ("\n" if rng.random() < 0.1 else "")
                    for _ in range(3_000_000)).encode()  # ~20 MB of text to slice from

    def text(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            off = rng.randrange(0, len(pool) - 65536)
            out += pool[off:off + rng.randrange(4096, 65536)]
        return bytes(out[:n])

    written = 0
    i = 0
    while written < total * 0.4:
        d = os.path.join(root, "usr/share/doc", f"pkg{i % 97}")
        os.makedirs(d, exist_ok=True)
        n = rng.randrange(64 << 10, 4 << 20)
        with open(os.path.join(d, f"text{i}.txt"), "wb") as f:
            f.write(text(n))
        written += n
        i += 1
    while written < total * 0.8:
        d = os.path.join(root, "usr/lib", f"lib{i % 31}")
        os.makedirs(d, exist_ok=True)
        n = rng.randrange(1 << 20, 24 << 20)
        with open(os.path.join(d, f"blob{i}.so"), "wb") as f:
            f.write(os.urandom(n))
        written += n
        i += 1
    while written < total:
        d = os.path.join(root, "etc/conf.d", f"d{i % 503}")
        os.makedirs(d, exist_ok=True)
        n = rng.randrange(100, 16 << 10)
        data = text(n) if rng.random() < 0.7 else os.urandom(n)
        p = os.path.join(d, f"small{i}.conf")
        with open(p, "wb") as f:
            f.write(data)
        if i % 50 == 0:
            os.symlink(f"small{i}.conf", os.path.join(d, f"link{i}"))
        written += n
        i += 1


def du(path: str) -> int:
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True,
                              check=True).stdout.split()[0])


CPU: dict[str, list[float]] = {}


def timed(cmd: list[str] | str, shell: bool = False, env: dict | None = None,
          label: str = "") -> float:
    """Wall seconds; the CPU seconds (user+sys of the children) go to CPU[label]."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    subprocess.run(cmd, shell=shell, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(label, []).append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cocker-bench-pack"))
    ap.add_argument("--no-umoci", action="store_true")
    args = ap.parse_args()

    tree = os.path.join(args.workdir, f"tree-{args.size_mb}")
    if not os.path.isdir(tree):
        print(f"generating a {args.size_mb} MB tree in {tree} ...", flush=True)
        tmp = tree + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        generate(tmp, args.size_mb)
        os.rename(tmp, tree)
    out = os.path.join(args.workdir, "out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    size = du(tree)
    nfiles = sum(len(f) for _, _, f in os.walk(tree))
    print(f"tree: {size / 1e6:.0f} MB, {nfiles} files; cpus: {os.cpu_count()}; "
          f"load: {os.getloadavg()[0]:.1f} (wall times mean little on a loaded machine; "
          "cpu s is user+sys)", flush=True)
    subprocess.run(f"tar -C {tree} -cf - . > /dev/null", shell=True, check=True)  # warm cache

    results: dict[str, tuple[float, int]] = {}
    cocker_out = os.path.join(out, "cocker.tar.zst")
    cocker_cmd = [sys.executable, "-c",
                  "import sys; from registry.layer import tar_codec as layer_tar\n"
                  "with open(sys.argv[2], 'wb', buffering=1 << 20) as f:\n"
                  "    print(layer_tar.pack_dir(sys.argv[1], f).digest)",
                  tree, cocker_out]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    tz_out = os.path.join(out, "tar.tar.zst")
    tz_cmd = f"tar -C {tree} -cf - . | zstd -q -T0 -3 -f -o {tz_out}"
    # Interleaved, so both see the same background load; the best run of each counts.
    times: dict[str, list[float]] = {"cocker": [], "tar": []}
    for _ in range(args.repeat):
        times["cocker"].append(timed(cocker_cmd, env=env, label="cocker pack (zstd)"))
        times["tar"].append(timed(tz_cmd, shell=True, label="tar -c | zstd -T0"))
    print("runs (s): cocker " + " ".join(f"{t:.2f}" for t in times["cocker"])
          + " | tar|zstd " + " ".join(f"{t:.2f}" for t in times["tar"]), flush=True)
    results["cocker pack (zstd)"] = (min(times["cocker"]), os.path.getsize(cocker_out))
    results["tar -c | zstd -T0"] = (min(times["tar"]), os.path.getsize(tz_out))

    if not args.no_umoci and shutil.which("umoci") and os.geteuid() == 0:
        layout = os.path.join(out, "umoci-layout")
        bundle = os.path.join(out, "umoci-bundle")
        subprocess.run(["umoci", "init", "--layout", layout], check=True)
        subprocess.run(["umoci", "new", "--image", f"{layout}:base"], check=True)
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:base", bundle], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rootfs = os.path.join(bundle, "rootfs")
        subprocess.run(f"cp -a {tree}/. {rootfs}/", shell=True, check=True)
        before = set(os.listdir(os.path.join(layout, "blobs", "sha256")))
        t = timed(["umoci", "--log", "error", "repack", "--image", f"{layout}:new", bundle],
                  label="umoci repack (gzip)")
        new = set(os.listdir(os.path.join(layout, "blobs", "sha256"))) - before
        biggest = max((os.path.getsize(os.path.join(layout, "blobs", "sha256", b))
                       for b in new), default=0)
        results["umoci repack (gzip)"] = (t, biggest)

    base = results["cocker pack (zstd)"][0]
    cbase = min(CPU["cocker pack (zstd)"])
    print(f"\n{'tool':<24}{'wall s':>9}{'cpu s':>8}{'output MB':>11}{'cocker/tool wall':>18}"
          f"{'cpu':>7}")
    for name, (t, n) in results.items():
        cpu = min(CPU[name])
        print(f"{name:<24}{t:>9.2f}{cpu:>8.2f}{n / 1e6:>11.1f}{base / t:>18.2f}{cbase / cpu:>7.2f}")
    ratio = base / results["tar -c | zstd -T0"][0]
    print(f"\ncocker / (tar | zstd -T0) = {ratio:.2f}  (goal <= 1.20: "
          f"{'met' if ratio <= 1.2 else 'NOT met'})")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
