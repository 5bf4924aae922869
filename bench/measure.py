"""The measurements, written once against :class:`bench.targets.Target`.

Each function takes a target, the report and a repetition count, adds its samples and
raises :class:`bench.targets.BenchError` when a command fails (the caller records the
error for that target and goes on with the next measurement).
"""
from __future__ import annotations

import subprocess
import time

from . import proc
from .stats import Measurement, Report
from .targets import IMAGE, BenchError, Target, run_cmd

MB = 1_000_000

MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("run_rm", "run --rm true (own CLI)", "s", 0.100),
    Measurement("run_rm_docker_cli", "run --rm true (docker CLI)", "s", 0.100),
    Measurement("run50", "50 concurrent run -d sleep", "s", 1.5),
    Measurement("rm50", "rm -f of those 50", "s", 1.0),
    Measurement("ready", "daemon ready (exec to /_ping)", "s", 0.300),
    Measurement("ready_cpu", "CPU time used until ready", "s"),
    Measurement("idle_rss", "daemon idle RSS", "bytes", 40 * MB),
    Measurement("idle_pss", "daemon idle PSS, all its processes", "bytes"),
    Measurement("ctr_pss", "per-container PSS", "bytes", 5 * MB),
    Measurement("log_write", "100 MB stdout, run until exit", "s", 2.0),
    Measurement("log_read", "logs of it to /dev/null", "s", 2.0),
    Measurement("peak_rss", "daemon peak RSS after all the above", "bytes"),
)

#: one million lines of 99 'a's and a newline: exactly 100 MB on stdout. (``head -c
#: 100000000 /dev/zero | tr '\\0' a | fold -w 99`` makes the same kind of output, but
#: busybox's tr and fold alone take 1.4 s of the 2 s goal on a 2-core machine; yes and
#: head take 0.6 s, so the engine's own cost shows.)
LOG_SCRIPT = f"yes {'a' * 99} | head -c 100000000"
LOG_BYTES = 100_000_000


def timed(argv: list[str], env: dict[str, str], *, timeout: float = 120,
          stdout: int | None = subprocess.DEVNULL) -> float:
    """Seconds ``argv`` takes to run to completion (raises BenchError if it fails)."""
    started = time.perf_counter()
    run_cmd(argv, env, timeout=timeout, stdout=stdout)
    return time.perf_counter() - started


def run_rm(target: Target, report: Report, n: int) -> None:
    """``run --rm IMG true`` through the target's own CLI, then through the docker CLI
    against its daemon (a like-for-like client). One unmeasured warm-up run each."""
    argv = [*target.cli(), "run", "--rm", *target.run_flags(), IMAGE, "true"]
    env = target.env()
    timed(argv, env)
    report.add("run_rm", target.name, *(timed(argv, env) for _ in range(n)))
    report.result("run_rm", target.name).note = target.cli_label
    docker = target.docker_cli()
    if docker is None:
        report.mark_missing(target.name, "no daemon", ["run_rm_docker_cli"])
        return
    argv = [*docker, "run", "--rm", *target.run_flags(), IMAGE, "true"]
    timed(argv, env)
    report.add("run_rm_docker_cli", target.name, *(timed(argv, env) for _ in range(n)))


def concurrent(target: Target, report: Report, n: int, count: int = 50) -> None:
    """``count`` concurrent ``run -d IMG sleep 300`` (wall clock until the last CLI
    exits), the PSS of each container's helper process while they all run, then one
    ``rm -f`` of all of them (wall clock)."""
    env = target.env()
    argv = [*target.cli(), "run", "-d", *target.run_flags(), IMAGE, "sleep", "300"]
    for _ in range(n):
        started = time.perf_counter()
        procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(count)]
        outputs = [p.communicate(timeout=300) for p in procs]
        elapsed = time.perf_counter() - started
        ids = [out.decode().strip() for out, _ in outputs if out.strip()]
        failed = [err.decode(errors="replace").strip() for p, (_, err) in zip(procs, outputs)
                  if p.returncode != 0]
        try:
            if failed:
                raise BenchError(f"{len(failed)} of {count} runs failed: {failed[0][-300:]}")
            report.add("run50", target.name, elapsed)
            pids = target.overhead_pids()
            if len(pids) != count:
                raise BenchError(f"found {len(pids)} {target.overhead_label} processes "
                                 f"for {count} containers")
            report.add("ctr_pss", target.name,
                       *(s for s in map(proc.pss_bytes, pids) if s is not None))
            report.result("ctr_pss", target.name).note = (
                f"{target.name}: {target.overhead_label}")
        finally:
            if ids:
                started = time.perf_counter()
                run_cmd([*target.cli(), *target.rm_force(), *ids], env, timeout=300)
                if not failed:
                    report.add("rm50", target.name, time.perf_counter() - started)
            if failed:
                target.remove_all_containers()


def daemon_start(target: Target, report: Report, n: int, settle: float = 1.0) -> None:
    """Restart the daemon ``n`` times (with the image already stored): the seconds from
    exec to the first good ``/_ping`` and the CPU time its processes used until then
    (which a busy machine does not inflate); ``settle`` seconds later, the RSS of the
    daemon (engine: engined; docker: dockerd and containerd) and the PSS of all its
    processes (engine: with the monitors' fork server; PSS so that the pages they share
    count once)."""
    ids = ["ready", "ready_cpu", "idle_rss", "idle_pss"]
    if not target.has_daemon:
        report.mark_missing(target.name, "no daemon", ids)
        return
    for _ in range(n):
        target.stop_daemon()
        report.add("ready", target.name, target.start_daemon())
        cpu = [proc.cpu_seconds(p) for p in target.daemon_pids()]
        report.add("ready_cpu", target.name, sum(c for c in cpu if c))
        time.sleep(settle)
        sizes = [proc.rss_bytes(p) for p in target.rss_pids()]
        report.add("idle_rss", target.name, sum(s for s in sizes if s))
        sizes = [proc.pss_bytes(p) for p in target.daemon_pids()]
        report.add("idle_pss", target.name, sum(s for s in sizes if s))
    if target.name == "docker":
        report.result("idle_rss", target.name).note = "docker: dockerd + containerd"
    if target.name == "engine" and len(target.daemon_pids()) > 1:
        report.result("idle_pss", target.name).note = "engine: engined + fork server"


def logs(target: Target, report: Report, n: int) -> None:
    """100 MB of stdout in lines through the default file log driver: ``run`` (attached,
    its output to /dev/null) until it exits, then ``logs`` to /dev/null. The first
    round also checks that ``logs`` gives back every byte."""
    env = target.env()
    for i in range(n):
        name = f"benchlog{i}-{target.token}"
        argv = [*target.cli(), "run", "--name", name, *target.run_flags(), IMAGE,
                "sh", "-c", LOG_SCRIPT]
        try:
            report.add("log_write", target.name, timed(argv, env, timeout=300))
            report.add("log_read", target.name,
                       timed([*target.cli(), "logs", name], env, timeout=300))
            if i == 0:
                got = count_output([*target.cli(), "logs", name], env)
                if got != LOG_BYTES:
                    report.result("log_read", target.name).note = (
                        f"{target.name}: logs gave {got} bytes of {LOG_BYTES}")
        finally:
            run_cmd([*target.cli(), *target.rm_force(), name], env, timeout=120)


def count_output(argv: list[str], env: dict[str, str]) -> int:
    """How many bytes ``argv`` writes to stdout."""
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    total = 0
    while chunk := p.stdout.read(1 << 20):
        total += len(chunk)
    p.wait(timeout=60)
    return total


def peak_rss(target: Target, report: Report, n: int) -> None:
    """The high-water mark of the daemon's RSS (VmHWM, summed over its processes) since
    its last start, read after the other measurements: what reading 100 MB of logs
    back, or 50 containers at once, cost at the worst moment. One sample."""
    if not target.has_daemon:
        report.mark_missing(target.name, "no daemon", ["peak_rss"])
        return
    peaks = [proc.peak_rss_bytes(p) for p in target.daemon_pids()]
    report.add("peak_rss", target.name, sum(p for p in peaks if p))
