"""Push and pull of a ~120 MB, 4-layer image through a local registry: engine vs Docker;
and serving that image to skopeo: ``engine registry serve`` vs ``docker-registry``.

Run as root: ``python bench/registry_bench.py [-n 3] [--registry engine|reference]
[--serve-only | --no-serve]``.

For each engine (and each repetition) a daemon of its own loads the image, the docker
CLI pushes it to a registry on loopback, then a second, empty daemon of the same engine
pulls it back (once it has been up for :data:`SETTLE` seconds): both transfers are timed
end to end (``docker push`` / ``docker pull`` against that daemon, so the client is the
same for both engines). The image's layers are random bytes, so compression gains
nothing and every byte crosses the wire.

The registry is ``engine registry serve`` by default, or Debian's ``docker-registry``
(``--registry reference``). Everything runs under a temporary directory that is removed
at the end; daemons are stopped by PID through :mod:`bench.targets`.

The serving comparison starts both registries, has skopeo copy the image into each (from
the same ``docker save`` archive), then times ``skopeo copy
docker://127.0.0.1:PORT/bench/img:v1 dir:DIR`` into an empty directory, ``-n`` times
from each, the two taking turns.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench import proc  # noqa: E402
from bench.targets import (  # noqa: E402
    DOCKER,
    REPO,
    BenchError,
    DockerTarget,
    EngineTarget,
    Target,
    base_env,
    run_cmd,
)

LAYERS = 4
LAYER_BYTES = 30_000_000
#: seconds an empty daemon is left alone between its start and the timed pull: what is
#: measured is the transfer, not the end of the daemon's start-up (engine's fork server
#: and dockerd's containerd still start in the background when they answer /_ping)
SETTLE = 1.0


def layer_tar(index: int) -> bytes:
    """One layer: a directory with a file of random (incompressible) bytes."""
    data = random.Random(index).randbytes(LAYER_BYTES)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(f"layer{index}")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(info)
        info = tarfile.TarInfo(f"layer{index}/data")
        info.size, info.mode = len(data), 0o644
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def warm_layer_tar() -> bytes:
    """The one small layer of the warm-up image."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("warm")
        info.size, info.mode = 4096, 0o644
        tf.addfile(info, io.BytesIO(b"w" * 4096))
    return buf.getvalue()


def image_archive(path: Path, tag: str, layers: list[bytes] | None = None) -> Path:
    """A ``docker save`` archive of an image named ``tag``: the 4 benchmark layers, or
    the ``layers`` given."""
    layers = [layer_tar(i) for i in range(LAYERS)] if layers is None else layers
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["sh"]}, "created": "2024-01-01T00:00:00Z",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag],
                 "Layers": [f"{d[7:]}/layer.tar" for d in diff_ids]}]
    members = [(config_name, config), ("manifest.json", json.dumps(manifest).encode())]
    members += [(f"{d[7:]}/layer.tar", t) for d, t in zip(diff_ids, layers, strict=True)]
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def start_registry(kind: str, base: Path, venv_bin: Path) -> tuple[subprocess.Popen, int]:
    port = proc.free_port()
    base.mkdir(parents=True, exist_ok=True)
    if kind == "reference":
        exe = shutil.which("docker-registry")
        if exe is None:
            raise BenchError("docker-registry is not installed")
        config = base / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                          f"    rootdirectory: {base / 'storage'}\nhttp:\n"
                          f"  addr: 127.0.0.1:{port}\n  secret: bench\n")
        argv = [exe, "serve", str(config)]
    else:
        argv = [str(venv_bin / "python"), "-m", "engine.registry", "serve", "--addr",
                f"127.0.0.1:{port}", "--root", str(base / "root")]
    log = open(base / "registry.log", "wb")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server, port
        if server.poll() is not None:
            break
        time.sleep(0.05)
    server.kill()
    server.wait()
    raise BenchError(f"registry did not start: {(base / 'registry.log').read_text()[-1000:]}")


def skopeo(*args: str, timeout: float = 600) -> float:
    """Seconds ``skopeo args`` takes (with TLS verification off: plain HTTP on loopback)."""
    exe = shutil.which("skopeo")
    if exe is None:
        raise BenchError("skopeo is not installed")
    started = time.perf_counter()
    run_cmd([exe, "--insecure-policy", *args], base_env(), timeout=timeout,
            stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure_serve(base: Path, venv_bin: Path, archive: Path,
                  repeat: int) -> dict[str, list[float]]:
    """Seconds of each ``skopeo copy`` of the image out of each registry, both running,
    taking turns."""
    registries: dict[str, tuple[subprocess.Popen, str]] = {}
    samples: dict[str, list[float]] = {}
    try:
        for kind in ("engine", "reference"):
            try:
                proc, port = start_registry(kind, base / f"serve-{kind}", venv_bin)
            except BenchError as e:
                print(f"{kind} registry: {e}", file=sys.stderr)
                continue
            image = f"127.0.0.1:{port}/bench/img:v1"
            registries[kind] = (proc, image)
            skopeo("copy", "--dest-tls-verify=false", f"docker-archive:{archive}",
                   f"docker://{image}")
            samples[kind] = []
        for rep in range(repeat):
            # which registry goes first alternates: the copy that follows another one
            # finds the disk busy with its writes
            order = list(registries.items())
            for kind, (_, image) in (order if rep % 2 == 0 else order[::-1]):
                dest = base / f"serve-{kind}-copy{rep}"
                samples[kind].append(skopeo("copy", "--src-tls-verify=false",
                                            f"docker://{image}", f"dir:{dest}"))
                shutil.rmtree(dest, ignore_errors=True)
                print(f"{kind} registry #{rep + 1}: skopeo pull {samples[kind][-1]:.2f} s",
                      flush=True)
    finally:
        for proc, _ in registries.values():
            proc.terminate()
            proc.wait(10)
    return samples


def report_serve(samples: dict[str, list[float]]) -> None:
    """The medians of the serving comparison and their ratio."""
    size_mb = LAYERS * LAYER_BYTES / 1e6
    print(f"\nskopeo copy docker://... dir:... of {size_mb:.0f} MB ({LAYERS} layers)")
    print(f"{'registry':<16} {'median s':>9} {'MB/s':>7}")
    medians = {k: statistics.median(v) for k, v in samples.items() if v}
    for kind, median in medians.items():
        label = "engine serve" if kind == "engine" else "docker-registry"
        print(f"{label:<16} {median:>9.2f} {size_mb / median:>7.1f}")
    if len(medians) == 2:
        paired = [r / e for e, r in zip(samples["engine"], samples["reference"], strict=False)]
        print(f"docker-registry / engine serve: {medians['reference'] / medians['engine']:.2f}x "
              f"(ratio of medians), {statistics.median(paired):.2f}x (median of the "
              f"{len(paired)} paired ratios)")


def docker(target: Target, *args: str, timeout: float = 600) -> float:
    """Seconds the docker CLI takes for ``args`` against ``target``'s daemon."""
    started = time.perf_counter()
    run_cmd([DOCKER or "docker", *args], target.env(), timeout=timeout,
            stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def make_target(name: str, base: Path, venv_bin: Path) -> Target:
    return EngineTarget(base, venv_bin) if name == "engine" else DockerTarget(base)


def measure(name: str, base: Path, venv_bin: Path, archive: Path, port: int,
            rep: int) -> tuple[float, float]:
    """One push (from a daemon with the image) and one pull (into an empty daemon).

    Each daemon first moves a small image of its own the same way, untimed: what is
    measured is a transfer by a daemon that has done one before (a daemon runs for
    months; its first pull's one-time costs — loading the registry code, the first
    TLS context, containerd's first content write — are not the transfer)."""
    repo = f"127.0.0.1:{port}/bench/{name}{rep}:v1"
    warm = f"127.0.0.1:{port}/bench/warm-{name}{rep}:v1"
    pusher = make_target(name, base / f"{name}-push{rep}", venv_bin)
    try:
        pusher.start_daemon()
        for tar in (archive, archive.with_name("warm.tar")):
            run_cmd([DOCKER or "docker", "load", "-i", str(tar)], pusher.env(), timeout=600)
        docker(pusher, "tag", "warm:v1", warm)
        docker(pusher, "push", warm)
        docker(pusher, "tag", "bench:v1", repo)
        push = docker(pusher, "push", repo)
    finally:
        pusher.cleanup()
    puller = make_target(name, base / f"{name}-pull{rep}", venv_bin)
    try:
        puller.start_daemon()
        docker(puller, "pull", warm)
        time.sleep(SETTLE)
        pull = docker(puller, "pull", repo)
    finally:
        puller.cleanup()
    return push, pull


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--repeat", type=int, default=3)
    p.add_argument("--registry", choices=("engine", "reference"), default="engine")
    p.add_argument("--only", default="engine,docker")
    p.add_argument("--venv-bin", type=Path, default=REPO / ".venv" / "bin")
    p.add_argument("--json", type=Path, help="write the samples to this file")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--serve-only", action="store_true",
                       help="only compare the registries serving skopeo")
    which.add_argument("--no-serve", action="store_true",
                       help="leave out the registries serving skopeo")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("registry_bench.py needs root (it starts daemons)", file=sys.stderr)
        return 2
    if DOCKER is None:
        print("the docker CLI is needed as the client", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="regbench", dir="/tmp"))
    results: dict[str, dict[str, list[float]]] = {}
    served: dict[str, list[float]] = {}
    registry = None
    try:
        archive = image_archive(base / "image.tar", "bench:v1")
        image_archive(base / "warm.tar", "warm:v1", [warm_layer_tar()])
        if not args.serve_only:
            registry, port = start_registry(args.registry, base / "registry", args.venv_bin)
            names = []
            for name in filter(None, args.only.split(",")):
                missing = make_target(name, base / "probe", args.venv_bin).missing()
                if missing:
                    print(f"{name}: {missing}")
                else:
                    names.append(name)
                    results[name] = {"push": [], "pull": []}
            # the engines take turns, so that a change of the machine's load over the run
            # weighs on both alike (and each repetition gives a pair of samples)
            for rep in range(args.repeat):
                for name in list(names):
                    try:
                        push, pull = measure(name, base, args.venv_bin, archive, port, rep)
                    except BenchError as e:
                        print(f"{name}: {e}", file=sys.stderr)
                        names.remove(name)
                        continue
                    results[name]["push"].append(push)
                    results[name]["pull"].append(pull)
                    print(f"{name} #{rep + 1}: push {push:.2f} s, pull {pull:.2f} s",
                          flush=True)
        if not args.no_serve:
            try:
                served = measure_serve(base, args.venv_bin, archive, args.repeat)
            except BenchError as e:
                print(f"serving: {e}", file=sys.stderr)
    finally:
        if registry is not None:
            registry.terminate()
            registry.wait(10)
        shutil.rmtree(base, ignore_errors=True)
    if served:
        report_serve(served)
    if args.serve_only:
        if args.json:
            args.json.write_text(json.dumps({"bytes": LAYERS * LAYER_BYTES,
                                             "serve": served}, indent=2))
        return 0
    size_mb = LAYERS * LAYER_BYTES / 1e6
    print(f"\n{LAYERS} layers, {size_mb:.0f} MB, registry: {args.registry}")
    print(f"{'engine':<8} {'push (median s)':>16} {'pull (median s)':>16} {'push MB/s':>10} "
          f"{'pull MB/s':>10}")
    for name, s in results.items():
        if not s["push"]:
            continue
        push, pull = statistics.median(s["push"]), statistics.median(s["pull"])
        print(f"{name:<8} {push:>16.2f} {pull:>16.2f} {size_mb / push:>10.1f} "
              f"{size_mb / pull:>10.1f}")
    if results.get("engine", {}).get("push") and results.get("docker", {}).get("push"):
        for op in ("push", "pull"):
            e, d = results["engine"][op], results["docker"][op]
            paired = [dv / ev for ev, dv in zip(e, d, strict=False)]
            print(f"docker / engine, {op}: {statistics.median(d) / statistics.median(e):.2f}x "
                  f"(ratio of medians), {statistics.median(paired):.2f}x (median of the "
                  f"{len(paired)} paired ratios)")
    if args.json:
        args.json.write_text(json.dumps({"registry": args.registry, "bytes":
                                         LAYERS * LAYER_BYTES, "samples": results,
                                         "serve": served}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
