"""Compare engine with Docker and Podman on this machine, in one run.

Usage (as root)::

    /work/main/.venv/bin/python bench/run.py [--quick] [-n N] [--json out.json]
        [--only engine,docker,podman] [--skip run_rm,logs,...]

Each engine gets its own temporary roots under one base directory in /tmp: engine's
``engined`` and Docker's ``dockerd`` (with its managed containerd) are started on
sockets there, Podman runs with ``--root/--runroot`` there. The same busybox rootfs tar
is imported into each as ``busybox:latest``. Every measurement is repeated N times and
the table gives median and p90 per engine, and the ratios engine/docker and
engine/podman. Everything started is stopped by PID, unmounted and deleted at the end,
also on Ctrl-C or SIGTERM. Nothing leaves the machine: containers have no network.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import measure
from bench.proc import (ignore_signals, interrupt_on_signals, load_average, log,
                        restore_signals, unmount_under)
from bench.stats import TARGETS, Report
from bench.targets import (
    REPO,
    BenchError,
    DockerTarget,
    EngineTarget,
    PodmanTarget,
    Target,
    dump_json,
    versions,
)

#: measurement groups, in the order they run: name -> (function, measurement ids)
GROUPS: dict[str, tuple[Callable[[Target, Report, int], None], list[str]]] = {
    "daemon": (measure.daemon_start, ["ready", "ready_cpu", "idle_rss", "idle_pss"]),
    "run_rm": (measure.run_rm, ["run_rm", "run_rm_docker_cli"]),
    "concurrent": (measure.concurrent, ["run50", "rm50", "ctr_pss"]),
    "logs": (measure.logs, ["log_write", "log_read"]),
    "peak": (measure.peak_rss, ["peak_rss"]),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py", description="Compare engine with Docker and Podman.")
    p.add_argument("-n", "--repeat", type=int, default=None,
                   help="repetitions of each measurement (default 10, 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="3 repetitions")
    p.add_argument("--json", type=Path, help="write every sample to this JSON file")
    p.add_argument("--only", default=",".join(TARGETS),
                   help="comma-separated targets to measure (default: all)")
    p.add_argument("--skip", default="",
                   help=f"comma-separated measurement groups to skip ({', '.join(GROUPS)})")
    p.add_argument("--venv-bin", type=Path, default=REPO / ".venv" / "bin",
                   help="where engined and engine are installed")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 10
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    unknown = set(filter(None, args.skip.split(","))) - set(GROUPS)
    if unknown:
        p.error(f"unknown measurement group(s): {', '.join(sorted(unknown))}")
    return args


def busybox_tar(path: Path) -> Path:
    """Build the test suite's busybox image (a rootfs tar) at ``path``: with the
    standalone builder in scripts/ when it is there, else with tests/conftest.py's."""
    for folder, module in (("scripts", "busybox_rootfs"), ("tests", "conftest")):
        if (REPO / folder / f"{module}.py").exists():
            sys.path.insert(0, str(REPO / folder))
            try:
                build = __import__(module).build_busybox_tar
            finally:
                sys.path.remove(str(REPO / folder))
            return build(path)
    raise BenchError("no busybox image builder (scripts/busybox_rootfs.py, tests/conftest.py)")


def prepare(target: Target, tar: Path, report: Report) -> bool:
    """Start the target's daemon and import the image; False (recorded) on failure."""
    try:
        if target.has_daemon:
            target.start_daemon()
        target.import_image(tar)
        return True
    except (BenchError, OSError) as e:
        log(f"{target.name}: setup failed: {e}")
        report.mark_missing(target.name, "setup failed")
        return False


def make_targets(names: list[str], base: Path, venv_bin: Path,
                 report: Report) -> list[Target]:
    """The selected targets that are installed; the others are recorded as missing."""
    classes = {"engine": lambda: EngineTarget(base, venv_bin),
               "docker": lambda: DockerTarget(base), "podman": lambda: PodmanTarget(base)}
    targets: list[Target] = []
    for name in TARGETS:
        if name not in names:
            report.mark_missing(name, "not selected")
            continue
        target = classes[name]()
        reason = target.missing()
        if reason:
            print(f"{name}: {reason}")
            report.mark_missing(name, reason)
        else:
            targets.append(target)
    return targets


def measure_all(targets: list[Target], base: Path, report: Report, repeat: int,
                skip: set[str]) -> list[float]:
    """Set every target up, then run each group of measurements on each target in
    turn; return the load averages seen at the start of each group."""
    tar = busybox_tar(base / "busybox.tar")
    ready = []
    for target in targets:
        log(f"{target.name}: starting and importing {tar.name}")
        if prepare(target, tar, report):
            ready.append(target)
    loads: list[float] = []
    for group, (func, ids) in GROUPS.items():
        if group in skip:
            for t in TARGETS:
                report.mark_missing(t, "skipped", ids)
            continue
        for target in ready:
            loads.append(load_average())
            log(f"{target.name}: {group} x{repeat} (load {loads[-1]:.1f})")
            try:
                func(target, report, repeat)
            except (BenchError, OSError) as e:
                log(f"{target.name}: {group} failed: {e}")
                report.mark_missing(target.name, "error", ids)
                report.result(ids[0], target.name).note = (
                    f"{target.name} {group}: {str(e).splitlines()[0][:200]}")
    return loads


def clean_up(targets: list[Target], base: Path, host_files: list[Path]) -> None:
    """Undo everything the run created; one target's failure does not stop the rest."""
    for target in targets:
        try:
            target.cleanup()
        except Exception as e:  # noqa: BLE001 - clean up the others regardless
            log(f"{target.name}: cleanup failed: {e}")
    unmount_under(base)
    shutil.rmtree(base, ignore_errors=True)
    for path in host_files:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py needs root (it starts daemons and containers)", file=sys.stderr)
        return 2
    report = Report(measure.MEASUREMENTS)
    # files outside the base directory that the engines create once per machine:
    # podman's lock segment and dockerd 20.10's trust key. Removed at the end unless
    # they were already there.
    host_files = [p for p in (Path("/dev/shm/libpod_lock"), Path("/etc/docker/key.json"))
                  if not p.exists()]
    old_handlers = interrupt_on_signals()
    base = Path(tempfile.mkdtemp(prefix="bench", dir="/tmp"))
    targets: list[Target] = []
    interrupted = False
    loads: list[float] = []
    started: dict[str, object] = {}
    try:
        targets = make_targets([t for t in args.only.split(",") if t], base, args.venv_bin,
                               report)
        started = {"date": datetime.datetime.now(datetime.UTC).isoformat(
                       timespec="seconds"),
                   "versions": versions()}  # now: the tree may change during the run
        loads = measure_all(targets, base, report, args.repeat,
                            {g for g in args.skip.split(",") if g})
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        ignore_signals()
        clean_up(targets, base, host_files)
        restore_signals(old_handlers)

    print(f"\n{report.format_table()}\n")
    if loads:
        print(f"1-minute load average while measuring: {min(loads):.1f} to {max(loads):.1f} "
              f"on {os.cpu_count()} CPUs\n")
    if args.json:
        meta = {"command": " ".join(sys.argv), "repeat": args.repeat, **started,
                "interrupted": interrupted, "load_average_1min": loads}
        dump_json(args.json, report.to_json(meta))
        print(f"samples written to {args.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
