"""The engines under test: engine, Docker and Podman, each in temporary roots of its own.

A :class:`Target` owns a directory under the run's base directory and everything the
engine creates there (daemon, containers, mounts, cgroups). ``cleanup()`` undoes all of
it, whatever state a measurement left behind: containers are removed through the
engine, then daemons are stopped by PID, leftover processes that mention the directory
are killed by PID, mounts below it are unmounted and it is deleted.

Every container runs with ``--network none``: engine's built-in drivers have no bridge
yet, and dockerd is started with ``--bridge=none --iptables=false`` so that it changes no
firewall rule or interface of the host.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO

from . import proc

IMAGE = "busybox:latest"
DOCKER = shutil.which("docker")
DOCKERD = shutil.which("dockerd") or ("/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd")
                                      else None)
PODMAN = shutil.which("podman")
REPO = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A command of the benchmark failed; the message carries its stderr."""


def base_env() -> dict[str, str]:
    """The environment for every engine and client: this one without the variables
    that would point a client elsewhere, and without PYTHONDONTWRITEBYTECODE (set on
    the build machines, not on a user's: without bytecode caches every Python start
    recompiles its modules)."""
    env = dict(os.environ)
    for var in ("PYTHONDONTWRITEBYTECODE", "DOCKER_HOST", "DOCKER_CONTEXT", "ENGINE_HOST",
                "CONTAINER_HOST", "CONTAINERS_CONF"):
        env.pop(var, None)
    return env


def run_cmd(argv: list[str], env: dict[str, str], *, timeout: float = 120,
            stdout: int | None = subprocess.PIPE, input: bytes | None = None) -> bytes:
    """Run ``argv`` to completion; return its stdout, raise BenchError when it fails."""
    try:
        p = subprocess.run(argv, env=env, stdout=stdout, stderr=subprocess.PIPE,
                           input=input, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{' '.join(argv[:6])}...: timed out after {timeout:.0f} s") from e
    if p.returncode != 0:
        raise BenchError(f"{command_label(argv)}: exit {p.returncode}: "
                         f"{p.stderr.decode(errors='replace').strip()[-500:]}")
    return p.stdout or b""


def command_label(argv: list[str]) -> str:
    """A short name for a command line in messages: the program and its verb
    (``podman run``), without the long option values before it."""
    verbs = ("run", "rm", "logs", "import", "ps", "create", "start")
    verb = next((a for a in argv[1:] if a in verbs), "")
    return f"{Path(argv[0]).name} {verb}".strip()


class Target(ABC):
    """One engine under test.

    Subclasses say how to start its daemon (if it has one), which CLI drives it, which
    processes are its daemon and its per-container overhead, and how to clean up.
    """

    #: the name in the report ("engine", "docker", "podman")
    name: str = ""

    def __init__(self, base: Path) -> None:
        self.dir = base / self.name
        self.token = secrets.token_hex(3)
        self.daemon: subprocess.Popen | None = None
        self._log: BinaryIO | None = None

    # -- what is installed ------------------------------------------------------------

    @abstractmethod
    def missing(self) -> str | None:
        """Why this target cannot be measured ("not installed"), or None."""

    # -- the daemon ---------------------------------------------------------------------

    @property
    def has_daemon(self) -> bool:
        return True

    @property
    def sock(self) -> str:
        return str(self.dir / f"{self.name}.sock")

    def daemon_argv(self) -> list[str]:
        raise NotImplementedError

    def start_daemon(self) -> float:
        """Start the daemon; return the seconds from exec to the first good /_ping."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = open(self.dir / "daemon.log", "ab")  # noqa: SIM115 - closed in cleanup()
        argv = self.daemon_argv()
        started = time.perf_counter()
        self.daemon = subprocess.Popen(argv, env=base_env(), stdout=self._log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        try:
            return proc.wait_ready(self.daemon, self.sock, started)
        except RuntimeError as e:
            tail = (self.dir / "daemon.log").read_bytes()[-1500:].decode(errors="replace")
            raise BenchError(f"{self.name} daemon: {e}\n{tail}") from e

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            proc.stop_process(self.daemon, timeout=30)
            self.daemon = None

    def daemon_pids(self) -> list[int]:
        """All of the daemon's long-lived processes (its whole footprint)."""
        return [self.daemon.pid] if self.daemon and self.daemon.poll() is None else []

    def rss_pids(self) -> list[int]:
        """The processes the idle RSS goal is about (by default all of them)."""
        return self.daemon_pids()

    # -- clients ------------------------------------------------------------------------

    @abstractmethod
    def cli(self) -> list[str]:
        """The argv prefix of the target's own CLI."""

    @property
    def cli_label(self) -> str:
        """Which client ``cli()`` is, for the report."""
        return f"{self.name} CLI"

    def env(self) -> dict[str, str]:
        """Environment for the own CLI and the docker CLI against this target."""
        env = base_env()
        env["DOCKER_CONFIG"] = str(self.dir / "docker-config")
        if self.has_daemon:
            env["DOCKER_HOST"] = f"unix://{self.sock}"
        return env

    def docker_cli(self) -> list[str] | None:
        """The docker CLI against this target's daemon, or None when there is none."""
        return [DOCKER] if DOCKER and self.has_daemon else None

    def run_flags(self) -> list[str]:
        """Flags every ``run`` gets, the same meaning for every target."""
        return ["--network", "none"]

    def rm_force(self) -> list[str]:
        """The verb and flags that remove running containers at once (SIGKILL)."""
        return ["rm", "-f"]

    def own(self, *args: str, timeout: float = 120, stdout: int | None = subprocess.PIPE,
            input: bytes | None = None) -> bytes:
        """Run the own CLI with ``args`` to completion."""
        return run_cmd([*self.cli(), *args], self.env(), timeout=timeout, stdout=stdout,
                       input=input)

    # -- images and containers ----------------------------------------------------------

    def import_image(self, tar: Path) -> None:
        self.own("import", "-c", 'CMD ["sh"]', str(tar), IMAGE, timeout=120)

    def container_ids(self) -> list[str]:
        out = self.own("ps", "-aq", "--no-trunc", timeout=60)
        return out.decode().split()

    def remove_all_containers(self) -> None:
        ids = self.container_ids()
        if ids:
            self.own(*self.rm_force(), *ids, timeout=300)

    @abstractmethod
    def overhead_pids(self) -> list[int]:
        """The per-container helper processes (monitor, shim, conmon) now running."""

    @property
    def overhead_label(self) -> str:
        return "per-container process"

    # -- teardown -----------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove containers, stop the daemon, kill leftovers by PID, unmount, delete."""
        if not self.dir.exists():
            return
        try:
            if not self.has_daemon or (self.daemon and self.daemon.poll() is None):
                self.remove_all_containers()
        except (BenchError, OSError):
            pass
        self.stop_daemon()
        self.kill_leftovers()
        time.sleep(0.2)
        proc.unmount_under(self.dir)
        self.remove_cgroups()
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill_leftovers(self) -> None:
        proc.kill_pids(proc.pids_mentioning(str(self.dir)))

    def remove_cgroups(self) -> None:
        """Remove the cgroups this target's containers left behind."""


class EngineTarget(Target):
    """engine: ``engined`` from the repository's virtualenv and its ``engine`` CLI (the
    docker CLI when the engine CLI is not there)."""

    name = "engine"

    def __init__(self, base: Path, venv_bin: Path) -> None:
        super().__init__(base)
        self.engined = venv_bin / "engined"
        self.engine_cli = venv_bin / "engine"

    def missing(self) -> str | None:
        return None if self.engined.exists() else f"not installed ({self.engined})"

    @property
    def data_root(self) -> Path:
        return self.dir / "data"

    @property
    def exec_root(self) -> Path:
        return self.dir / "run"

    def daemon_argv(self) -> list[str]:
        return [str(self.engined), "-H", f"unix://{self.sock}", "--data-root",
                str(self.data_root), "--exec-root", str(self.exec_root),
                "-p", str(self.dir / "engined.pid")]

    def cli(self) -> list[str]:
        if self.engine_cli.exists():
            return [str(self.engine_cli)]
        if DOCKER:
            return [DOCKER]
        raise BenchError("neither the engine CLI nor the docker CLI is installed")

    @property
    def cli_label(self) -> str:
        return "engine CLI" if self.engine_cli.exists() else "docker CLI (no engine CLI)"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["ENGINE_HOST"] = env["DOCKER_HOST"]
        return env

    def overhead_pids(self) -> list[int]:
        pids = (proc.read_pid_file(p) for p in self.exec_root.glob("c/*/monitor.pid"))
        return [p for p in pids if p and proc.alive(p)]

    def daemon_pids(self) -> list[int]:
        """engined and its helpers (the monitors' fork server): its direct children
        while no container runs, as monitors detach from it."""
        pids = super().daemon_pids()
        if pids:
            monitors = set(self.overhead_pids())
            pids += [p for p in proc.children_of(pids[0]) if p not in monitors]
        return pids

    def rss_pids(self) -> list[int]:
        """engined alone: the goal is about the daemon's own RSS (its fork server, a
        separate small interpreter, counts in ``idle_pss``)."""
        return super().daemon_pids()

    @property
    def overhead_label(self) -> str:
        return "monitor"

    def kill_leftovers(self) -> None:
        # monitors outlive their daemon by design; then the containers' own processes
        for name in ("monitor.pid", "pid"):
            pids = (proc.read_pid_file(p) for p in self.exec_root.glob(f"c/*/{name}"))
            proc.kill_pids(p for p in pids if p)
        super().kill_leftovers()

    def remove_cgroups(self) -> None:
        containers = self.data_root / "containers"
        if containers.is_dir():
            for entry in containers.iterdir():
                proc.remove_cgroup_tree(f"engine/{entry.name}")


class DockerTarget(Target):
    """Docker: a ``dockerd`` of our own (which starts its own managed containerd when no
    system containerd answers at /run/containerd/containerd.sock), driven by the docker
    CLI. No bridge and no iptables rules; its cgroups go under a parent of our own."""

    name = "docker"

    def missing(self) -> str | None:
        if not DOCKERD:
            return "not installed"
        if not DOCKER:
            return "not installed (no docker CLI)"
        return None

    @property
    def cgroup_parent(self) -> str:
        return f"bench-docker-{self.token}"

    def daemon_argv(self) -> list[str]:
        config = self.dir / "daemon.json"
        if not config.exists():
            config.write_text("{}\n")  # not /etc/docker/daemon.json: defaults only
        return [DOCKERD or "dockerd", "-H", f"unix://{self.sock}",
                "--config-file", str(config),
                "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "exec"),
                "--pidfile", str(self.dir / "dockerd.pid"), *self.network_args(),
                f"--cgroup-parent=/{self.cgroup_parent}"]

    def network_args(self) -> list[str]:
        """dockerd's networking flags: no bridge and no firewall rule of the host (the
        network benchmark overrides this to give Docker its bridge and iptables)."""
        return ["--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
                "--ip-forward=false", "--userland-proxy=false"]

    def daemon_pids(self) -> list[int]:
        """dockerd and the containerd it manages (its child)."""
        pids = super().daemon_pids()
        if pids:
            pids += [p for p in proc.children_of(pids[0])
                     if "containerd" in " ".join(proc.cmdline(p)[:1])]
        return pids

    def cli(self) -> list[str]:
        return [DOCKER or "docker"]

    def overhead_pids(self) -> list[int]:
        return [p for p in proc.pids_mentioning(str(self.dir))
                if proc.cmdline(p)[:1] and proc.cmdline(p)[0].endswith("containerd-shim-runc-v2")
                and proc.alive(p)]

    @property
    def overhead_label(self) -> str:
        return "containerd-shim-runc-v2"

    def remove_cgroups(self) -> None:
        proc.remove_cgroup_tree(self.cgroup_parent)


class PodmanTarget(Target):
    """Podman: daemonless; every command gets ``--root/--runroot/--tmpdir`` in our
    directory and the cgroupfs manager (no systemd here). Its containers log with
    k8s-file, podman's file-based equivalent of json-file."""

    name = "podman"

    def missing(self) -> str | None:
        return None if PODMAN else "not installed"

    @property
    def has_daemon(self) -> bool:
        return False

    @property
    def cgroup_parent(self) -> str:
        return f"bench-podman-{self.token}"

    def cli(self) -> list[str]:
        return [PODMAN or "podman", "--root", str(self.dir / "root"),
                "--runroot", str(self.dir / "runroot"), "--tmpdir", str(self.dir / "tmp"),
                "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                "--storage-driver", "overlay"]

    def run_flags(self) -> list[str]:
        # podman raises RLIMIT_NOFILE/NPROC to values this machine's user namespace
        # refuses (runc: "error setting rlimit ... operation not permitted"): ask for
        # ordinary limits. Docker and engine leave the limits alone.
        return [*super().run_flags(), "--ulimit", "nofile=1024:1024",
                "--ulimit", "nproc=4096:4096", "--log-driver", "k8s-file",
                "--cgroup-parent", f"/{self.cgroup_parent}"]

    def env(self) -> dict[str, str]:
        env = super().env()
        env.pop("DOCKER_CONFIG")  # podman would read its registry logins from there
        return env

    def rm_force(self) -> list[str]:
        # podman's rm -f stops with the 10 s grace period first (docker's kills at
        # once; sleep as PID 1 ignores SIGTERM): -t 0 is the same operation
        return ["rm", "-f", "-t", "0"]

    def remove_all_containers(self) -> None:
        self.own(*self.rm_force(), "-a", timeout=300)

    def overhead_pids(self) -> list[int]:
        return [p for p in proc.pids_mentioning(str(self.dir))
                if proc.cmdline(p)[:1] and proc.cmdline(p)[0].endswith("conmon")
                and proc.alive(p)]

    @property
    def overhead_label(self) -> str:
        return "conmon"

    def remove_cgroups(self) -> None:
        proc.remove_cgroup_tree(self.cgroup_parent)


def versions() -> dict[str, str]:
    """Versions of what is measured, for the JSON file."""
    out: dict[str, str] = {}
    try:
        out["engine"] = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
            text=True, timeout=10, check=False).stdout.strip()
    except OSError:
        pass
    for label, program in (("dockerd", DOCKERD), ("docker CLI", DOCKER), ("podman", PODMAN)):
        if program:
            try:
                out[label] = subprocess.run([program, "--version"], capture_output=True,
                                            text=True, timeout=10, check=False).stdout.strip()
            except OSError:
                pass
    out["kernel"] = os.uname().release
    out["cpus"] = str(os.cpu_count())
    return out


def dump_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")
