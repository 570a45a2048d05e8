#!/usr/bin/env python3
"""Boot time: `cocker container run --rm IMAGE /bin/true` against `runc run` on the same busybox
rootfs, interleaved in one run (the order rotating); medians and the ratio. Also the boot of a
50-layer image.

    python3 bench/boot.py [--runs 20] [--layers 50] [--install /opt/cocker]

cocker is started through the `cocker` console script of the interpreter running the bench,
and also through the one of the real install (scripts/install.sh's venv, $COCKER_VENV or
/opt/cocker) when that is another interpreter: both are reported, each with its bare
interpreter start. Needs root, runc and busybox-static. Both sides get a new network
namespace (cocker --net none, runc's default spec), so the work compared is the same.

`--baseline VENV:HOME` adds another build of cocker to the same interleaved run (the
`cocker` script of VENV, with COCKER_HOME=HOME holding a `busybox:1.0` it can boot), to
tell a change's effect from the machine's noise. For example, for the tree at REV:

    git worktree add /tmp/base REV && python3 -m venv /tmp/venv-base
    /tmp/venv-base/bin/pip install -e /tmp/base
    cd /tmp/base && /tmp/venv-base/bin/python -c 'import sys; sys.path[:0] = ["bench", "."];
        import boot; boot.build_images("/tmp/base-home", 2)'
    python3 bench/boot.py --baseline /tmp/venv-base:/tmp/base-home
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def cocker_argv(python: str = sys.executable) -> list[str]:
    # the console script next to the interpreter (a pyenv shim would add its own start-up)
    script = os.path.join(os.path.dirname(python), "cocker")
    if os.path.isfile(script):
        return [script]
    return [python, "-m", "cocker.main"]


def installed_python(venv: str) -> str | None:
    """The real install's interpreter, when it exists and is not the one running us."""
    python = os.path.join(venv, "bin", "python")
    if not os.path.isfile(os.path.join(venv, "bin", "cocker")) or not os.access(python, os.X_OK):
        return None
    if os.path.realpath(os.path.dirname(python)) == os.path.realpath(os.path.dirname(sys.executable)):
        return None
    return python


def cocker_plain_argv() -> list[str]:
    """cocker as a regular (non-editable) install would start: no .pth processing (this
    machine's editable-install finder and sandbox CA hook cost tens of ms), same code."""
    import site
    paths = [ROOT] + site.getsitepackages()
    boot = f"import sys; sys.path[:0] = {paths!r}; from cocker.main import main; main()"
    return [sys.executable, "-S", "-c", boot]


def timed(argv: list[str], env: dict, cwd: str | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
    return dt


def build_images(home: str, layers: int) -> str:
    from builder.testimage import make_busybox_rootfs
    from registry.layer import tar_codec as layer_tar
    from registry.oci import manifest as oci
    from registry.repo import image as imagemod
    from registry.repo.store import Store
    store = Store(home)
    tmp = tempfile.mkdtemp(prefix="bootbench-")
    try:
        base = make_busybox_rootfs(os.path.join(tmp, "base"))
        dirs = [base]
        for i in range(1, layers):
            d = os.path.join(tmp, f"l{i}")
            os.makedirs(os.path.join(d, "layers"))
            with open(os.path.join(d, "layers", str(i)), "w") as f:
                f.write(f"{i}\n")
            dirs.append(d)
        packed = [layer_tar.pack_into(store, d) for d in dirs]
        for name, upto in (("busybox", 1), ("layered", layers)):
            cfg = oci.new_config([p.diff_id for p in packed[:upto]])
            cfg["config"] = {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin:/sbin"]}
            imagemod.publish(store, name, "1.0", cfg, [p.descriptor() for p in packed[:upto]],
                             force=True)
        bundle = os.path.join(home, "runc-bundle")
        shutil.copytree(base, os.path.join(bundle, "rootfs"), symlinks=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    spec["root"]["readonly"] = False
    with open(path, "w") as f:
        json.dump(spec, f)
    return bundle


BOOT = ["container", "run", "--rm", "--net", "none", "busybox:1.0", "/bin/true"]
LAYERED = ["container", "run", "--rm", "--net", "none", "layered:1.0", "/bin/true"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--layers", type=int, default=50)
    ap.add_argument("--install", default=os.environ.get("COCKER_VENV", "/opt/cocker"),
                    help="venv of the real install, measured too when present")
    ap.add_argument("--baseline", metavar="VENV:HOME",
                    help="another build of cocker, interleaved in the same run (see above)")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("runc"):
        raise SystemExit("needs root and runc")
    # byte-compile once, as an installed package would be (the environment may forbid it)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "cocker", "registry", "runtime"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    home = tempfile.mkdtemp(prefix="cocker-bootbench-")
    env = dict(os.environ, COCKER_HOME=home)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    ck = cocker_argv()
    pythons = {"this interpreter": sys.executable}
    inst = installed_python(args.install)
    if inst:
        pythons[f"install {args.install}"] = inst
    try:
        bundle = build_images(home, args.layers)
        first_layered = timed(ck + LAYERED, env)        # includes unpacking the layers
        timed(ck + BOOT, env)                           # warm-up: layer tree, caches
        timed(["runc", "run", "bootbench-warm"], env, cwd=bundle)
        sides = {label: cocker_argv(py) for label, py in pythons.items()}
        sides["this interpreter, -S"] = cocker_plain_argv()
        envs = {label: env for label in sides}
        if args.baseline:
            venv, _, base_home = args.baseline.partition(":")
            sides["baseline"] = [os.path.join(venv, "bin", "cocker")]
            envs["baseline"] = dict(env, COCKER_HOME=base_home)
            timed(sides["baseline"] + BOOT, envs["baseline"])       # warm-up
        times: dict[str, list[float]] = {label: [] for label in sides}
        runc_t: list[float] = []
        layered_t: list[float] = []
        steps = ["runc", *sides, "layered"]
        for i in range(args.runs):
            # the order rotates: whatever a boot leaves to the kernel (a network namespace is
            # torn down after its last process is gone) falls on each side in turn
            for step in steps[i % len(steps):] + steps[:i % len(steps)]:
                if step == "runc":
                    runc_t.append(timed(["runc", "run", f"bootbench-{os.getpid()}-{i}"], env,
                                        cwd=bundle))
                elif step == "layered":
                    layered_t.append(timed(ck + LAYERED, env))
                else:
                    times[step].append(timed(sides[step] + BOOT, envs[step]))
        py_t = {label: statistics.median(timed([py, "-c", "pass"], env) for _ in range(7))
                for label, py in pythons.items()}
        report(args, statistics.median(runc_t), times, statistics.median(layered_t),
               first_layered, py_t, pythons)
    finally:
        subprocess.run(ck + ["container", "ls", "-a"], env=env, stdout=subprocess.DEVNULL)
        shutil.rmtree(home, ignore_errors=True)


def report(args, mr: float, times: dict, ml: float, first_layered: float, py_t: dict,
           pythons: dict) -> None:
    print(f"runs: {args.runs} each, interleaved; load average {os.getloadavg()[0]:.1f}")
    print(f"runc run /bin/true                              median {mr * 1000:7.1f} ms")
    for label, ts in times.items():
        m = statistics.median(ts)
        print(f"cocker run --rm /bin/true ({label + ')':24} median {m * 1000:7.1f} ms"
              f"  ratio {m / mr:.2f}x")
    if "baseline" in times:
        ratio = statistics.median(times["this interpreter"]) / statistics.median(times["baseline"])
        print(f"this interpreter's cocker vs the baseline: {ratio:.3f}x ({(ratio - 1) * 100:+.1f}%)")
    print(f"cocker, {args.layers}-layer image (this interpreter)       median {ml * 1000:7.1f} ms"
          f"  (first boot incl. unpack {first_layered * 1000:.0f} ms)")
    for label, t in py_t.items():
        print(f"(python interpreter start alone, {label} {pythons[label]}: {t * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
