"""The container lifecycle: create, start, stop, remove, restart policies, exec.

Everything that varies (network, volumes, logs) is reached through the plugin host's
drivers; the runtime is reached through the monitor client. Every step that makes
something (a snapshot, a namespace, a mount, a monitor) is undone, in reverse order,
when a later step fails.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import shutil
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Callable

import msgspec

from engine.sdk.drivers import LogContext
from engine.sdk.errors import (
    Conflict,
    EngineError,
    InvalidArgument,
    NotFound,
    NotModified,
)

from . import netns as netns_mod
from .events import Events
from .models import TRANSITIONS, Container, ExecRecord, State
from .networks import clean_endpoint, ports_summary, ports_view
from .plugins import PluginHost
from .runtime import client as monitor_client
from .runtime import spec as spec_mod
from .util import atomic_write, new_id, parse_time, rfc3339

log = logging.getLogger("engine.containers")

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(Container)

SIGNALS = {s.name[3:]: int(s) for s in signal.Signals if s.name.startswith("SIG") and "_" not in s.name}


def parse_signal(value: str | int | None, default: int = signal.SIGKILL) -> int:
    """``9``, ``KILL``, ``SIGKILL`` -> 9; anything else is a 400."""
    if value in (None, ""):
        return default
    v = str(value).upper()
    if v.isdigit():
        n = int(v)
        if 0 < n < 65:
            return n
    else:
        v = v[3:] if v.startswith("SIG") else v
        if v in SIGNALS:
            return SIGNALS[v]
    raise InvalidArgument(f"Invalid signal: {value}")


_LEFT = ("admiring adoring affectionate agitated amazing angry awesome blissful bold boring "
         "brave busy charming clever cool compassionate competent condescending confident "
         "cranky crazy dazzling determined distracted dreamy eager ecstatic elastic elated "
         "elegant eloquent epic fervent festive flamboyant focused friendly frosty gallant "
         "gifted goofy gracious happy hardcore heuristic hopeful hungry infallible inspiring "
         "jolly jovial keen kind laughing loving lucid modest musing mystifying naughty "
         "nervous nifty nostalgic objective optimistic peaceful pedantic pensive practical "
         "priceless quirky quizzical relaxed reverent romantic sad serene sharp silly "
         "sleepy stoic strange stupefied suspicious tender thirsty trusting unruffled "
         "upbeat vibrant vigilant vigorous wizardly wonderful xenodochial youthful zealous "
         "zen").split()
_RIGHT = ("albattani allen almeida archimedes ardinghelli aryabhata austin babbage banach "
          "bardeen bartik bassi bell benz bhabha bhaskara blackwell bohr booth borg bose "
          "boyd brahmagupta brattain brown carson chandrasekhar cohen curie darwin davinci "
          "dijkstra dubinsky easley edison einstein elion engelbart euclid euler fermat "
          "fermi feynman franklin galileo gates goldberg goldstine golick goodall hamilton "
          "hawking heisenberg hermann hodgkin hoover hopper hugle hypatia jang jennings "
          "jepsen joliot jones kalam kare keller kepler khorana kilby kirch knuth kowalevski "
          "lalande lamarr leakey leavitt lewin lichterman liskov lovelace lumiere mahavira "
          "mayer mccarthy mcclintock mclean mcnulty meitner mendel merkle mestorf mirzakhani "
          "montalcini moore morse murdock napier nash neumann newton nightingale nobel noether "
          "northcutt noyce panini pare pasteur payne perlman pike poincare poitras ptolemy "
          "raman ramanujan ride ritchie roentgen rosalind saha sammet shannon shaw shirley "
          "shockley sinoussi snyder spence stonebraker sutherland swanson swartz swirles "
          "tesla thompson torvalds turing varahamihira visvesvaraya volhard wescoff wiles "
          "williams wilson wing wozniak wright yalow yonath").split()


def cgroup_path(cid: str) -> str:
    """The container's cgroup, absolute so every runtime puts it in the same place
    (runc treats a relative path as relative to its own cgroup)."""
    return f"/engine/{cid}"


def random_name() -> str:
    return f"{random.choice(_LEFT)}_{random.choice(_RIGHT)}"


class Runtime:
    """A started container's live handles (never persisted)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.exited = asyncio.Event()
        self.exited.set()
        self.exit_waiters: list[asyncio.Future] = []
        self.removed = asyncio.Event()
        self.pending_attach: list[tuple[dict, asyncio.Future]] = []
        self.watch_task: asyncio.Task | None = None
        self.restart_task: asyncio.Task | None = None
        self.monitor: monitor_client.Monitor | None = None
        # the record's writes: one at a time, and a write covers every change made
        # before it began (see ContainerService.save)
        self.save_lock = asyncio.Lock()
        self.changes = 0        # changes asked to be saved
        self.saved = 0          # changes on disk
        self.gone = False       # removed: nothing is written any more


class ContainerService:
    """Owns every container record and drives each through its lifecycle."""

    def __init__(self, *, data_root: str, exec_root: str, images, layers, plugins: PluginHost,
                 events: Events, default_log_driver: str = "json-file",
                 default_log_opts: dict[str, str] | None = None,
                 default_runtime: str = "builtin", default_network: str = "",
                 networks=None) -> None:
        self.root = Path(data_root, "containers")
        self.exec_root = Path(exec_root)
        self.images = images
        self.layers = layers
        self.plugins = plugins
        self.events = events
        self.default_log_driver = default_log_driver
        self.default_log_opts = default_log_opts or {}
        self.default_runtime = default_runtime
        self.default_network = default_network
        self.networks = networks   # the NetworkService (core/networks.py), when there is one
        self.containers: dict[str, Container] = {}
        self.rt: dict[str, Runtime] = {}
        self.names: dict[str, str] = {}
        self.execs: dict[str, ExecRecord] = {}
        self._tasks: set[asyncio.Task] = set()
        # set when an exec's exit code is recorded (see exec_wait)
        self._exec_exited: dict[str, asyncio.Event] = {}
        # terminal sizes asked for before an exec's process was made
        self._exec_sizes: dict[str, tuple[int, int]] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        (self.exec_root / "c").mkdir(parents=True, exist_ok=True)
        (self.exec_root / "x").mkdir(parents=True, exist_ok=True)

    def _spawn(self, coro) -> asyncio.Task:
        """A background task the service keeps a reference to until it ends (the event
        loop keeps only weak ones: an unreferenced pending task can be collected)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ paths

    def dir(self, cid: str) -> Path:
        return self.root / cid

    def state_dir(self, cid: str) -> Path:
        # unix socket paths are limited to 108 bytes: keep this one short
        return self.exec_root / "c" / cid[:16]

    def exec_state_dir(self, eid: str) -> Path:
        return self.exec_root / "x" / eid[:16]

    async def save(self, c: Container) -> None:
        """Write the container's record durably (temp file, fsync, rename), off the
        event loop: fifty containers starting at once do not queue behind each
        other's fsyncs. A container's writes run one at a time, each encoding the
        record when its turn comes, so the file never goes back to an older state and
        a save that finds its change already written by a later one returns at once."""
        rt = self.runtime(c)
        rt.changes += 1
        mine = rt.changes
        async with rt.save_lock:
            if rt.saved >= mine or rt.gone:
                return  # written by a later save, or the container is gone
            upto, data = rt.changes, _ENC.encode(c)
            try:
                await self.run(atomic_write, self.dir(c.id) / "config.json", data)
            except FileNotFoundError:
                if self.dir(c.id).exists():
                    raise
                return  # removed meanwhile
            rt.saved = upto

    def set_status(self, c: Container, status: str) -> None:
        if status != c.state.status and status not in TRANSITIONS.get(c.state.status, ()):
            raise Conflict(f"cannot change container {c.id[:12]} from {c.state.status} to {status}")
        c.state.status = status

    async def run(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # ------------------------------------------------------------------ lookup

    def get(self, ref: str) -> Container:
        if not ref:
            raise NotFound("No such container: ")
        c = self.containers.get(ref)
        if c is not None:
            return c
        cid = self.names.get(ref.lstrip("/"))
        if cid:
            return self.containers[cid]
        matches = [cid for cid in self.containers if cid.startswith(ref)]
        if len(matches) == 1:
            return self.containers[matches[0]]
        if len(matches) > 1:
            raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}")

    def runtime(self, c: Container) -> Runtime:
        rt = self.rt.get(c.id)
        if rt is None:
            rt = self.rt[c.id] = Runtime()
        return rt

    def image_in_use(self, image_id: str) -> bool:
        return any(c.image == image_id for c in self.containers.values())

    def driver_in_use(self, kind: str, name: str) -> str:
        for c in self.containers.values():
            if kind == "log" and c.log_driver == name:
                return f"container {c.name.lstrip('/')}"
            if kind == "volume" and any(m.get("Driver") == name for m in c.mounts):
                return f"container {c.name.lstrip('/')}"
            if kind == "network" and c.state.running and any(
                    ep.get("Driver") == name for ep in c.networks.values()):
                return f"container {c.name.lstrip('/')}"
        return ""

    # ------------------------------------------------------------------ restore

    async def restore(self) -> None:
        """Load every container; re-attach to monitors that outlived the daemon."""
        for d in sorted(self.root.iterdir()):
            f = d / "config.json"
            try:
                c = _DEC.decode(f.read_bytes())
            except FileNotFoundError:
                shutil.rmtree(d, ignore_errors=True)  # a create that never finished
                continue
            except msgspec.DecodeError as e:
                log.error("container %s: unreadable state (%s); skipped", d.name, e)
                continue
            self.containers[c.id] = c
            self.names[c.name.lstrip("/")] = c.id
        for c in list(self.containers.values()):
            await self._restore_one(c)
        for c in list(self.containers.values()):
            if not c.state.running and self._restart_at_boot(c):
                self._spawn(self._start_at_boot(c))

    def _restart_at_boot(self, c: Container) -> bool:
        """Docker's policies when the daemon starts: ``always`` comes back even after a
        manual stop, ``unless-stopped`` unless stopped by hand, ``on-failure`` after a
        failure (within its retry count)."""
        if not c.has_been_started or c.state.status in ("removing", "dead"):
            return False
        name = (c.host_config.get("RestartPolicy") or {}).get("Name") or "no"
        if name == "always":
            return True
        return name in ("unless-stopped", "on-failure") and \
            self._should_restart(c, c.state.exit_code)

    async def _start_at_boot(self, c: Container) -> None:
        try:
            await self.start(c.id)
            log.info("container %s: started by its restart policy", c.id[:12])
        except NotModified:
            pass
        except Exception as e:  # logged: the daemon goes on with the others
            log.error("container %s: restart at daemon start failed: %s", c.id[:12], e)

    async def _restore_one(self, c: Container) -> None:
        rt = self.runtime(c)
        if c.state.status == "removing":
            await self._finish_remove(c, volumes=False)
            return
        if not c.state.running:
            return
        m = monitor_client.Monitor(str(self.state_dir(c.id)))
        if m.alive():
            rt.monitor = m
            rt.exited.clear()
            rt.watch_task = asyncio.create_task(self._watch(c, m))
            log.info("container %s: live-restored (pid %d)", c.id[:12], c.state.pid)
            return
        res = m.read_exit() or {"exit_code": 255, "error": "the monitor died"}
        await self._on_exit(c, res, restored=True)

    # ------------------------------------------------------------------ create

    async def create(self, name: str | None, body: dict, platform: str = "") -> tuple[str, list[str]]:
        if not isinstance(body, dict):
            raise InvalidArgument("container config must be a JSON object")
        _check_config_types(body)
        image_ref = body.get("Image") or ""
        if not image_ref:
            raise InvalidArgument("No image specified (config.Image is empty)")
        if name:
            if not NAME_RE.match(name):
                raise InvalidArgument(
                    f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
            name = name.lstrip("/")
            if name in self.names:
                raise Conflict(
                    f'Conflict. The container name "/{name}" is already in use by container '
                    f'"{self.names[name]}". You have to remove (or rename) that container to be '
                    "able to reuse that name.")
        else:
            name = random_name()
            while name in self.names:
                name = random_name() + str(random.randint(0, 9))
        try:
            image = await self.run(self.images.get, image_ref)
        except NotFound:
            raise NotFound(f"No such image: {image_ref}") from None
        img_cfg = (await self.run(self.images.config, image)).get("config") or {}
        host_config = body.get("HostConfig") or {}
        if not isinstance(host_config, dict):
            raise InvalidArgument("HostConfig must be a JSON object")
        config = self._merge_config(body, img_cfg)
        warnings: list[str] = []
        log_cfg = host_config.get("LogConfig") or {}
        log_driver = log_cfg.get("Type") or self.default_log_driver
        log_opts = log_cfg.get("Config") or ({} if log_cfg.get("Type") else dict(self.default_log_opts))
        drv = self.plugins.log(log_driver)
        drv.validate_options(log_opts)
        runtime = host_config.get("Runtime") or self.default_runtime
        if runtime in ("runc", "io.containerd.runc.v2"):
            runtime = "runc"
        elif runtime not in ("builtin",):
            raise InvalidArgument(f"unknown or invalid runtime name: {runtime}")
        if runtime == "runc" and not shutil.which("runc"):
            raise InvalidArgument("runtime runc is not installed")
        self._validate_host_config(host_config)
        networks = (self.networks.plan(host_config, body.get("NetworkingConfig"),
                                       self.default_network) if self.networks else {})
        restart = host_config.get("RestartPolicy") or {}
        if restart.get("Name") not in (None, "", "no", "always", "unless-stopped", "on-failure"):
            raise InvalidArgument(f"invalid restart policy '{restart.get('Name')}'")
        retries = restart.get("MaximumRetryCount") or 0
        if not isinstance(retries, int):
            raise InvalidArgument("RestartPolicy.MaximumRetryCount must be an integer")
        if retries and restart.get("Name") != "on-failure":
            raise InvalidArgument("invalid restart policy: maximum retry count can only be used "
                                  "with 'on-failure'")
        if retries < 0:
            raise InvalidArgument("invalid restart policy: maximum retry count cannot be "
                                  "negative")
        if host_config.get("AutoRemove") and restart.get("Name") not in (None, "", "no"):
            raise InvalidArgument("can't create 'AutoRemove' container with restart policy")

        cid = new_id()
        entry = list(config.get("Entrypoint") or [])
        cmd = list(config.get("Cmd") or [])
        argv = entry + cmd
        if not argv:
            raise InvalidArgument("No command specified")
        c = Container(
            id=cid, name="/" + name, created=rfc3339(), image=image.id, image_ref=image_ref,
            path=argv[0], args=argv[1:], config=config, host_config=host_config,
            runtime=runtime, log_driver=log_driver, log_opts=log_opts,
            platform=platform or "linux", networks=networks,
        )
        self.names[name] = cid  # reserve the name before the first await
        d = self.dir(cid)
        try:
            d.mkdir(parents=True)
            top = image.layers[-1].chain_id if image.layers else None
            await self.run(self.layers.create_rw, cid, top)
            c.mounts = await self._plan_mounts(c, img_cfg)
            await self.save(c)
        except BaseException:
            self.names.pop(name, None)
            try:
                await self.run(self.layers.remove_rw, cid)
            except Exception:
                pass
            shutil.rmtree(d, ignore_errors=True)
            raise
        self.containers[cid] = c
        self.events.emit("container", "create", cid, {"image": image_ref, "name": name})
        return cid, warnings

    def _merge_config(self, body: dict, img: dict) -> dict:
        cfg = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
        env = list(img.get("Env") or [])
        keys = {e.split("=", 1)[0]: i for i, e in enumerate(env)}
        for e in body.get("Env") or []:
            if not isinstance(e, str):
                raise InvalidArgument("Env entries must be strings")
            k = e.split("=", 1)[0]
            if k in keys:
                env[keys[k]] = e
            else:
                keys[k] = len(env)
                env.append(e)
        if not any(e.startswith("PATH=") for e in env):
            env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        cfg["Env"] = env
        if body.get("Entrypoint") is not None:
            ep = body["Entrypoint"]
            cfg["Entrypoint"] = [ep] if isinstance(ep, str) else list(ep)
            if ep in ([], [""], ""):
                cfg["Entrypoint"] = None
            cfg["Cmd"] = body.get("Cmd")  # a new entrypoint drops the image's CMD
        else:
            cfg["Entrypoint"] = img.get("Entrypoint")
            cfg["Cmd"] = body.get("Cmd") if body.get("Cmd") else img.get("Cmd")
        if isinstance(cfg.get("Cmd"), str):
            cfg["Cmd"] = [cfg["Cmd"]]
        for key in ("WorkingDir", "User", "StopSignal"):
            if not cfg.get(key) and img.get(key):
                cfg[key] = img[key]
        labels = dict(img.get("Labels") or {})
        labels.update(body.get("Labels") or {})
        cfg["Labels"] = labels
        exposed = dict(img.get("ExposedPorts") or {})
        exposed.update(body.get("ExposedPorts") or {})
        cfg["ExposedPorts"] = exposed or None
        vols = dict(img.get("Volumes") or {})
        vols.update(body.get("Volumes") or {})
        cfg["Volumes"] = vols or None
        cfg.setdefault("Hostname", "")
        cfg["Image"] = body.get("Image")
        for key in ("Tty", "OpenStdin", "StdinOnce", "AttachStdin", "AttachStdout", "AttachStderr"):
            cfg[key] = bool(body.get(key))
        return cfg

    def _validate_host_config(self, hc: dict) -> None:
        for key in ("Memory", "MemorySwap", "MemoryReservation", "NanoCpus", "CpuShares",
                    "CpuQuota", "CpuPeriod", "ShmSize"):
            v = hc.get(key)
            if v is not None and not isinstance(v, int):
                raise InvalidArgument(f"HostConfig.{key} must be an integer")
        mem = hc.get("Memory") or 0
        if mem and mem < 6 * 1024 * 1024:
            raise InvalidArgument("Minimum memory limit allowed is 6MB")
        swap = hc.get("MemorySwap") or 0
        if swap > 0 and mem and swap < mem:
            raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, "
                                  "see usage")
        if hc.get("NanoCpus") and (hc.get("CpuQuota") or hc.get("CpuPeriod")):
            raise InvalidArgument("Conflicting options: Nano CPUs and CPU Period cannot both be set")
        ncpu = os.cpu_count() or 1
        if (hc.get("NanoCpus") or 0) > ncpu * 1_000_000_000:
            raise InvalidArgument(f"Range of CPUs is from 0.01 to {ncpu}.00, as there are only "
                                  f"{ncpu} CPUs available")
        nm = hc.get("NetworkMode") or "default"
        if nm.startswith("container:"):
            raise InvalidArgument("network mode container:<id> is not supported yet")

    async def _plan_mounts(self, c: Container, img_cfg: dict) -> list[dict]:
        """Turn Binds, Mounts, Tmpfs and the image's VOLUMEs into Docker MountPoints."""
        hc = c.host_config
        out: list[dict] = []
        seen: set[str] = set()

        def add(mp: dict) -> None:
            dest = os.path.normpath(mp["Destination"])
            if not dest.startswith("/"):
                raise InvalidArgument(f"invalid mount config: mount path must be absolute: {dest}")
            if dest == "/":
                raise InvalidArgument("invalid mount config: destination can't be '/'")
            if dest in seen:
                raise InvalidArgument(f"Duplicate mount point: {dest}")
            seen.add(dest)
            mp["Destination"] = dest
            out.append(mp)

        for spec in hc.get("Binds") or []:
            add(self._parse_bind(spec))
        for m in hc.get("Mounts") or []:
            add(self._parse_mount(m))
        for dest, opts in (hc.get("Tmpfs") or {}).items():
            add({"Type": "tmpfs", "Source": "", "Destination": dest, "Mode": opts or "",
                 "RW": "ro" not in (opts or "").split(","), "Propagation": "", "Driver": ""})
        for dest in (c.config.get("Volumes") or {}):
            if os.path.normpath(dest) in seen:
                continue
            add({"Type": "volume", "Name": new_id(), "Source": "", "Destination": dest,
                 "Driver": "local", "Mode": "", "RW": True, "Propagation": "", "Anonymous": True})
        for mp in out:  # named volumes are created now, as Docker does
            if mp["Type"] == "volume":
                if not mp.get("Driver"):
                    mp["Driver"] = await self._volume_driver_of(
                        mp["Name"], hc.get("VolumeDriver") or "")
                drv = self.plugins.volume(mp["Driver"])
                try:
                    info = await drv.get(mp["Name"])
                except NotFound:
                    info = await drv.create(mp["Name"], mp.pop("_opts", {}) or {}, {})
                    self.events.emit("volume", "create", mp["Name"], {"driver": drv.name})
                mp.pop("_opts", None)
                mp["Source"] = info.mountpoint
                mp["_copy"] = True  # the image's files go into it if it is empty (first start)
        return out

    async def _volume_driver_of(self, name: str, requested: str) -> str:
        """The driver of an existing named volume (any driver), else the one asked
        for with ``--volume-driver``, else ``local``."""
        if requested:
            return requested
        for dname, drv in self.plugins.drivers["volume"].items():
            if dname == "bind":
                continue
            try:
                await drv.get(name)
                return dname
            except NotFound:
                continue
            except Exception as e:  # a dead plugin must not stop a local volume
                log.warning("volume driver %s: %s", dname, e)
        return "local"

    def _parse_bind(self, spec: str) -> dict:
        parts = spec.split(":")
        if len(parts) == 1:
            raise InvalidArgument(f"invalid volume specification: '{spec}'")
        if len(parts) > 3:
            raise InvalidArgument(f"invalid volume specification: '{spec}'")
        src, dest = parts[0], parts[1]
        mode = parts[2] if len(parts) == 3 else ""
        opts = [o for o in mode.split(",") if o]
        for o in opts:
            if o not in ("ro", "rw", "z", "Z", "nocopy", "shared", "rshared", "slave", "rslave",
                         "private", "rprivate", "consistent", "cached", "delegated"):
                raise InvalidArgument(f"invalid mode: {o}")
        rw = "ro" not in opts
        prop = next((o for o in opts if o.endswith(("shared", "slave", "private"))), "")
        if not src:
            raise InvalidArgument(f"invalid volume specification: '{spec}'")
        if src.startswith("/"):
            return {"Type": "bind", "Source": os.path.normpath(src), "Destination": dest,
                    "Mode": mode, "RW": rw, "Propagation": prop or "rprivate", "Driver": "bind",
                    "_create": True}
        return {"Type": "volume", "Name": src, "Source": "", "Destination": dest,
                "Driver": "", "Mode": mode, "RW": rw, "Propagation": "",
                "_nocopy": "nocopy" in opts}

    def _parse_mount(self, m: dict) -> dict:
        if not isinstance(m, dict):
            raise InvalidArgument("invalid mount config: expected an object")
        typ = m.get("Type") or "volume"
        target = m.get("Target") or ""
        if not target:
            raise InvalidArgument("invalid mount config: Target must not be empty")
        ro = bool(m.get("ReadOnly"))
        if typ == "bind":
            src = m.get("Source") or ""
            if not src.startswith("/"):
                raise InvalidArgument(f"invalid mount config for type \"bind\": invalid mount path: "
                                      f"'{src}' mount path must be absolute")
            if not os.path.exists(src):
                raise InvalidArgument(f"invalid mount config for type \"bind\": bind source path "
                                      f"does not exist: {src}")
            prop = ((m.get("BindOptions") or {}).get("Propagation")) or "rprivate"
            return {"Type": "bind", "Source": os.path.normpath(src), "Destination": target,
                    "Mode": "", "RW": not ro, "Propagation": prop, "Driver": "bind"}
        if typ == "volume":
            vo = m.get("VolumeOptions") or {}
            drv = ((vo.get("DriverConfig") or {}).get("Name")) or ""
            name = m.get("Source") or new_id()
            return {"Type": "volume", "Name": name, "Source": "", "Destination": target,
                    "Driver": drv, "Mode": "z", "RW": not ro, "Propagation": "",
                    "_opts": (vo.get("DriverConfig") or {}).get("Options") or {},
                    "_nocopy": bool(vo.get("NoCopy")), "Anonymous": not m.get("Source")}
        if typ == "tmpfs":
            to = m.get("TmpfsOptions") or {}
            opts = []
            if to.get("SizeBytes"):
                opts.append(f"size={int(to['SizeBytes'])}")
            if to.get("Mode"):
                opts.append(f"mode={int(to['Mode']):o}")
            if ro:
                opts.append("ro")
            return {"Type": "tmpfs", "Source": "", "Destination": target, "Mode": ",".join(opts),
                    "RW": not ro, "Propagation": "", "Driver": ""}
        raise InvalidArgument(f"invalid mount config: mount type unknown: {typ!r}")

    # ------------------------------------------------------------------ start

    async def start(self, ref: str) -> None:
        c = self.get(ref)
        rt = self.runtime(c)
        async with rt.lock:
            if c.state.status == "paused":
                raise Conflict("cannot start a paused container, try unpause instead")
            if c.state.running:
                raise NotModified("container already started")
            if c.state.status in ("removing", "dead"):
                raise Conflict(f"container {c.id[:12]} is marked for removal and cannot be started")
            c.manual_stop = False
            try:
                await self._start(c, rt)
            except Exception as e:  # a driver's raw error too: the record must say so
                c.state.error = (e.message if isinstance(e, EngineError)
                                 else f"{type(e).__name__}: {e}")
                code = getattr(e, "exit_code", 0)
                if code:
                    c.state.exit_code = code
                await self.save(c)
                if c.host_config.get("AutoRemove"):
                    # nothing ran; the CLI's wait(condition=removed) must still return
                    await self._finish_remove_after_failed_start(c)
                raise

    async def _finish_remove_after_failed_start(self, c: Container) -> None:
        try:
            self.set_status(c, "removing")
            await self._finish_remove(c, volumes=True)
        except Exception as e:  # pragma: no cover - logged, the record stays
            log.error("auto-remove of %s after a failed start: %s", c.id[:12], e)

    async def _start(self, c: Container, rt: Runtime) -> None:
        sdir = self.state_dir(c.id)
        async with AsyncExitStack() as undo:
            rootfs = await self.run(self.layers.mount, c.id)
            undo.push_async_callback(self.run, self.layers.unmount, c.id)
            ns_path, host_net, endpoint = await self._join_network(c, undo)
            oci_mounts = await self._mount_volumes(c, rootfs, undo)
            oci_mounts += await self.run(self._write_etc_files, c, host_net)
            await self.run(_fresh_dir, sdir)
            undo.callback(shutil.rmtree, sdir, True)
            cfg, hc = c.config, c.host_config
            hostname = cfg.get("Hostname") or (os.uname().nodename if host_net else c.id[:12])
            cfg["Hostname"] = hostname
            try:
                spec = await self.run(lambda: spec_mod.build_spec(
                    container_id=c.id, args=[c.path] + c.args, env=cfg.get("Env") or [],
                    cwd=cfg.get("WorkingDir") or "/", user=cfg.get("User") or "",
                    tty=bool(cfg.get("Tty")), hostname=hostname,
                    domainname=cfg.get("Domainname") or "", rootfs=rootfs,
                    readonly_rootfs=bool(hc.get("ReadonlyRootfs")), mounts=oci_mounts,
                    netns=ns_path, host_network=host_net, host_config=hc,
                    cgroups_path=cgroup_path(c.id),
                    annotations={"org.opencontainers.image.ref.name": c.image_ref}))
            except ValueError as e:
                raise InvalidArgument(str(e)) from None
            await self.run(spec_mod.write_bundle, str(sdir), spec)
            drv = self.plugins.log(c.log_driver)
            log_ctx = self.log_context(c)
            try:
                res = await monitor_client.create(
                    container_id=c.id, bundle=str(sdir), state_dir=str(sdir), runtime=c.runtime,
                    log_writer=drv.writer or None,
                    log_context=msgspec.to_builtins(log_ctx) if drv.writer else None,
                    stdin_open=bool(cfg.get("OpenStdin")),
                    # as Docker, a client leaving a terminal (detach keys) never closes
                    # its input: StdinOnce applies to plain pipes only
                    stdin_once=bool(cfg.get("StdinOnce")) and not cfg.get("Tty"),
                    runc_root=str(self.exec_root / "runc"))
            except monitor_client.MonitorError as e:
                raise _start_error(e) from None
            m = monitor_client.Monitor(str(sdir))
            undo.push_async_callback(self._kill_quietly, m)
            await self._connect_pending(c, rt, m)
            try:
                await m.start()
            except monitor_client.MonitorError as e:
                raise _start_error(e) from None
            # it runs: from here on the watcher owns the teardown
            undo.pop_all()
        rt.monitor = m
        c.netns = ns_path or ""
        c.state = State(status="running", pid=int(res.get("pid") or 0), started_at=rfc3339())
        c.has_been_started = True
        rt.exited.clear()
        await self.save(c)
        rt.watch_task = asyncio.create_task(self._watch(c, m))
        self.events.emit("container", "start", c.id, self._attrs(c))

    async def _kill_quietly(self, m) -> None:
        try:
            await m.kill(signal.SIGKILL)
            await asyncio.wait_for(m.wait(), 5)
        except Exception:
            pass

    async def _connect_pending(self, c: Container, rt: Runtime, m) -> None:
        pending, rt.pending_attach = rt.pending_attach, []
        for opts, fut in pending:
            if fut.done():
                continue
            try:
                stream = await m.attach(opts.get("stdin", False), opts.get("stdout", True),
                                        opts.get("stderr", True))
                fut.set_result(stream)
            except Exception as e:
                fut.set_exception(e)

    async def _join_network(self, c: Container, undo: AsyncExitStack):
        """Give the container its network namespace and endpoints (see core/networks.py).
        Returns (netns path or None for the host's, host networking?, None)."""
        if self.networks is None:
            raise EngineError("this daemon has no network service")
        ns_path, host_net = await self.networks.join_container(c, undo, self.default_network)
        return ns_path, host_net, None

    async def _mount_volumes(self, c: Container, rootfs: str, undo: AsyncExitStack) -> list[dict]:
        oci: list[dict] = []
        for mp in c.mounts:
            typ = mp["Type"]
            if typ == "tmpfs":
                opts = ["nosuid", "nodev", "noexec"]
                opts += [o for o in (mp.get("Mode") or "").split(",") if o]
                oci.append({"destination": mp["Destination"], "type": "tmpfs", "source": "tmpfs",
                            "options": opts})
                continue
            drv = self.plugins.volume(mp.get("Driver") or ("bind" if typ == "bind" else "local"))
            name = mp["Source"] if typ == "bind" else mp["Name"]
            if typ == "bind" and mp.get("_create") and not os.path.exists(name):
                await drv.create(name, {"create_host_path": "true"}, {})
            if (typ == "volume" and (mp.pop("_copy", False) or mp.pop("_fresh", False))
                    and not mp.get("_nocopy")):
                image_dir = await self.run(_image_dir, rootfs, mp["Destination"])
                if image_dir is not None:
                    await self._seed_volume(drv, name, c.id, image_dir)
            src = await drv.mount(name, c.id)
            undo.push_async_callback(drv.unmount, name, c.id)
            mp["Source"] = src
            opts = ["rbind", "ro" if not mp.get("RW", True) else "rw"]
            prop = mp.get("Propagation")
            if prop:
                opts.append(prop)
            oci.append({"destination": mp["Destination"], "type": "bind", "source": src,
                        "options": opts})
        return oci

    async def _seed_volume(self, drv, name: str, cid: str, image_dir: str) -> None:
        """Copy what the image has at the volume's path (``image_dir``, resolved in the
        rootfs) into volume ``name`` if it is empty, as Docker does: under a mount of
        its own, released at once (so a tmpfs volume, mounted again for the container,
        starts empty, and a bind or disk volume keeps the files)."""
        seed_id = f"{cid}-copy"
        src = await drv.mount(name, seed_id)
        try:
            await self.run(_copy_up, image_dir, src)
        finally:
            await drv.unmount(name, seed_id)

    def _write_etc_files(self, c: Container, host_net: bool) -> list[dict]:
        d = self.dir(c.id)
        cfg, hc = c.config, c.host_config
        hostname = cfg.get("Hostname") or (os.uname().nodename if host_net else c.id[:12])
        if host_net:
            hosts = Path("/etc/hosts").read_text() if os.path.exists("/etc/hosts") else ""
        else:
            hosts = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                     "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
                     "ff02::2\tip6-allrouters\n")
            for ep in c.networks.values():
                if ep.get("IPAddress"):
                    hosts += f"{ep['IPAddress']}\t{hostname}\n"
        for extra in hc.get("ExtraHosts") or []:
            host, _, ip = extra.partition(":")
            hosts += f"{ip}\t{host}\n"
        atomic_write(d / "hosts", hosts.encode(), durable=False)
        atomic_write(d / "hostname", (hostname + "\n").encode(), durable=False)
        embedded = [ns for ep in c.networks.values() for ns in ep.get("_dns") or []]
        atomic_write(d / "resolv.conf", _resolv_conf(hc, host_net, embedded[:1]).encode(),
                     durable=False)
        ro = "ro" if hc.get("ReadonlyRootfs") else "rw"
        return [{"destination": f"/etc/{n}", "type": "bind", "source": str(d / n),
                 "options": ["rbind", "rprivate", ro]} for n in ("resolv.conf", "hostname", "hosts")]

    def log_context(self, c: Container) -> LogContext:
        return LogContext(container_id=c.id, container_name=c.name, image=c.image_ref,
                          log_dir=str(self.dir(c.id)), options=dict(c.log_opts),
                          labels=dict(c.config.get("Labels") or {}))

    def _attrs(self, c: Container, **extra) -> dict:
        a = {"image": c.image_ref, "name": c.name.lstrip("/")}
        a.update(c.config.get("Labels") or {})
        a.update(extra)
        return a

    # ------------------------------------------------------------------ exit

    async def _watch(self, c: Container, m) -> None:
        while True:
            try:
                res = await m.wait()
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not m.alive():
                    res = m.read_exit() or {"exit_code": 255, "error": f"monitor lost: {e}"}
                    break
                await asyncio.sleep(0.2)
        await self._on_exit(c, res)

    async def _on_exit(self, c: Container, res: dict, restored: bool = False) -> None:
        rt = self.runtime(c)
        code = int(res.get("exit_code", 255))
        c.state.exit_code = code
        c.state.oom_killed = bool(res.get("oom_killed"))
        c.state.finished_at = res.get("finished_at") or rfc3339()
        c.state.error = res.get("error") or ""
        c.state.pid = 0
        await self._teardown(c)
        if c.state.status != "removing":
            c.state.status = "exited"
        await self.save(c)
        rt.monitor = None
        self.events.emit("container", "die", c.id, self._attrs(c, exitCode=code))
        if c.state.oom_killed:
            self.events.emit("container", "oom", c.id, self._attrs(c))
        rt.exited.set()
        waiters, rt.exit_waiters = rt.exit_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(c.state)
        if c.state.status == "removing":
            return
        if self._should_restart(c, code):
            rt.restart_task = asyncio.create_task(self._restart_later(c))
        elif c.host_config.get("AutoRemove"):
            try:
                await self.remove(c.id, force=True, volumes=True)
            except NotFound:
                pass
            except Exception as e:  # pragma: no cover - logged, the record stays
                log.error("auto-remove of %s failed: %s", c.id[:12], e)

    async def _teardown(self, c: Container) -> None:
        """Undo what start did, in reverse order. Each step tolerates 'already gone'."""
        if self.networks is not None:
            await self.networks.leave_container(c)   # logs and goes on when a driver fails
        if c.netns:
            try:
                await self.run(netns_mod.delete, c.netns)
            except OSError as e:
                log.warning("container %s: netns delete failed: %s", c.id[:12], e)
            c.netns = ""
        for mp in c.mounts:
            if mp["Type"] in ("volume", "bind"):
                try:
                    drv = self.plugins.volume(mp.get("Driver") or "local")
                    await drv.unmount(mp["Source"] if mp["Type"] == "bind" else mp["Name"], c.id)
                except Exception as e:
                    log.warning("container %s: volume unmount failed: %s", c.id[:12], e)
        try:
            await self.run(self.layers.unmount, c.id)
        except Exception as e:
            log.warning("container %s: rootfs unmount failed: %s", c.id[:12], e)
        await self.run(_remove_dirs, self.state_dir(c.id))

    def _should_restart(self, c: Container, code: int) -> bool:
        pol = c.host_config.get("RestartPolicy") or {}
        name = pol.get("Name") or "no"
        if c.manual_stop or name == "no":
            return False
        if name in ("always", "unless-stopped"):
            return True
        if name == "on-failure":
            limit = int(pol.get("MaximumRetryCount") or 0)
            return code != 0 and (limit == 0 or c.restart_count < limit)
        return False

    async def _restart_later(self, c: Container) -> None:
        # Docker's backoff: 100 ms doubling, reset after a run of 10 s or more
        ran = time.time() - parse_time(c.state.started_at)
        if ran >= 10:
            c.restart_count = 0
        delay = min(0.1 * (2 ** c.restart_count), 60.0)
        c.state.status = "restarting"
        await self.save(c)
        await asyncio.sleep(delay)
        rt = self.runtime(c)
        async with rt.lock:
            if c.state.status != "restarting" or c.manual_stop:
                return
            c.restart_count += 1
            try:
                await self._start(c, rt)
            except Exception as e:
                c.state.status = "exited"
                c.state.error = str(e)
                await self.save(c)
                log.error("restart of %s failed: %s", c.id[:12], e)

    # ------------------------------------------------------------------ stop & co

    async def kill(self, ref: str, sig: str | int | None = None) -> None:
        c = self.get(ref)
        n = parse_signal(sig)
        rt = self.runtime(c)
        if c.state.status == "restarting" and rt.restart_task:
            c.manual_stop = True
            rt.restart_task.cancel()
            c.state.status = "exited"
            await self.save(c)
            return
        if not c.state.running or rt.monitor is None:
            raise Conflict(f"Cannot kill container: {ref}: Container {c.id} is not running")
        # Docker: a kill with SIGKILL, or with the container's stop signal (any signal
        # when none is configured), is a manual stop: the restart policy does not apply
        # when the container dies of it.
        stop_sig = c.config.get("StopSignal")
        if n == signal.SIGKILL or not stop_sig or n == parse_signal(stop_sig):
            c.manual_stop = True
            await self.save(c)
        await rt.monitor.kill(n)
        if c.state.status == "paused" and n == signal.SIGKILL:
            await self._thaw(c)
        self.events.emit("container", "kill", c.id, self._attrs(c, signal=n))

    async def stop(self, ref: str, timeout: int | None = None, sig: str | None = None) -> None:
        c = self.get(ref)
        rt = self.runtime(c)
        c.manual_stop = True
        if c.state.status == "restarting" and rt.restart_task:
            rt.restart_task.cancel()
            c.state.status = "exited"
            await self.save(c)
            return
        if not c.state.running or rt.monitor is None:
            raise NotModified("container already stopped")
        await self.save(c)
        if timeout is None:
            timeout = c.config.get("StopTimeout")
            timeout = 10 if timeout is None else int(timeout)
        n = parse_signal(sig or c.config.get("StopSignal"), signal.SIGTERM)
        m = rt.monitor
        if c.state.status == "paused":
            await self._thaw(c)
        # as Docker, each signal a stop sends is a "kill" event; emitted before the
        # signal goes out so that it always precedes the "die"
        self.events.emit("container", "kill", c.id, self._attrs(c, signal=int(n)))
        try:
            await m.kill(n)
        except Exception:
            pass
        if timeout < 0:
            await rt.exited.wait()
        else:
            try:
                await asyncio.wait_for(rt.exited.wait(), timeout)
            except asyncio.TimeoutError:
                self.events.emit("container", "kill", c.id,
                                 self._attrs(c, signal=int(signal.SIGKILL)))
                try:
                    await m.kill(signal.SIGKILL)
                except Exception:
                    pass
                await rt.exited.wait()
        self.events.emit("container", "stop", c.id, self._attrs(c))

    async def restart(self, ref: str, timeout: int | None = None) -> None:
        c = self.get(ref)
        if c.state.running:
            try:
                await self.stop(ref, timeout)
            except NotModified:
                pass
        rt = self.runtime(c)
        await rt.exited.wait()
        async with rt.lock:
            c.manual_stop = False
            if not c.state.running:
                await self._start(c, rt)
        self.events.emit("container", "restart", c.id, self._attrs(c))

    async def _thaw(self, c: Container) -> None:
        from .runtime import cgroups

        await self.run(cgroups.thaw, cgroup_path(c.id))
        c.state.status = "running"
        await self.save(c)

    async def pause(self, ref: str) -> None:
        from .runtime import cgroups

        c = self.get(ref)
        if c.state.status == "paused":
            raise Conflict(f"Container {c.id} is already paused")
        if c.state.status != "running":
            raise Conflict(f"Container {c.id} is not running")
        await self.run(cgroups.freeze, cgroup_path(c.id))
        self.set_status(c, "paused")
        await self.save(c)
        self.events.emit("container", "pause", c.id, self._attrs(c))

    async def unpause(self, ref: str) -> None:
        c = self.get(ref)
        if c.state.status != "paused":
            raise Conflict(f"Container {c.id} is not paused")
        await self._thaw(c)
        self.events.emit("container", "unpause", c.id, self._attrs(c))

    async def wait(self, ref: str, condition: str = "not-running") -> dict:
        c = self.get(ref)
        rt = self.runtime(c)
        if condition not in ("not-running", "next-exit", "removed", ""):
            raise InvalidArgument(f"invalid condition: {condition!r}")
        if condition in ("not-running", "") and not c.state.running and c.state.status != "created":
            return {"StatusCode": c.state.exit_code, "Error": None}
        if condition == "not-running" and c.state.status == "created":
            return {"StatusCode": c.state.exit_code, "Error": None}
        if condition == "removed":
            state_holder: list[State] = []
            fut = asyncio.get_running_loop().create_future()
            rt.exit_waiters.append(fut)

            async def exit_code() -> None:
                state_holder.append(await fut)

            t = asyncio.create_task(exit_code())
            await rt.removed.wait()
            t.cancel()
            st = state_holder[0] if state_holder else c.state
            return {"StatusCode": st.exit_code, "Error": None}
        fut = asyncio.get_running_loop().create_future()
        rt.exit_waiters.append(fut)
        st = await fut
        return {"StatusCode": st.exit_code,
                "Error": {"Message": st.error} if st.error else None}

    # HostConfig fields ``docker update`` may change; the resource ones reach the
    # cgroup of a running container at once.
    _UPDATABLE = ("Memory", "MemorySwap", "MemoryReservation", "CpuShares", "CpuQuota",
                  "CpuPeriod", "NanoCpus", "PidsLimit", "CpusetCpus", "CpusetMems",
                  "BlkioWeight")

    async def update(self, ref: str, body: dict) -> list[str]:
        """``POST /containers/{id}/update``: the restart policy and resource limits.
        Returns Docker's warnings (none)."""
        c = self.get(ref)
        if not isinstance(body, dict):
            raise InvalidArgument("update config must be a JSON object")
        # the CLI sends every field: zero means "unchanged"
        changes = {k: body[k] for k in self._UPDATABLE if body.get(k) not in (None, 0, "")}
        merged = {**c.host_config, **changes}
        self._validate_host_config(merged)
        pol = body.get("RestartPolicy")
        if pol and pol.get("Name"):
            if c.host_config.get("AutoRemove") and pol.get("Name") != "no":
                raise InvalidArgument("Restart policy cannot be updated because AutoRemove "
                                      "is enabled for the container")
            merged["RestartPolicy"] = pol
        if changes and c.state.running:
            from .runtime import cgroups

            res = spec_mod.resources(merged)
            res.pop("devices", None)
            try:
                await self.run(cgroups.update, cgroup_path(c.id), res)
            except OSError as e:
                raise InvalidArgument(f"Cannot update container {c.id}: {e}") from None
        c.host_config = merged
        await self.save(c)
        self.events.emit("container", "update", c.id, self._attrs(c))
        return []

    async def rename(self, ref: str, new: str) -> None:
        c = self.get(ref)
        if not new or not NAME_RE.match(new):
            raise InvalidArgument(f"Invalid container name ({new}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        new = new.lstrip("/")
        old = c.name.lstrip("/")
        if new == old:
            raise InvalidArgument("Renaming a container with the same name as its current name")
        if new in self.names:
            raise Conflict(f'Conflict. The container name "/{new}" is already in use by container '
                           f'"{self.names[new]}". You have to remove (or rename) that container '
                           "to be able to reuse that name.")
        self.names[new] = c.id
        self.names.pop(old, None)
        c.name = "/" + new
        await self.save(c)
        self.events.emit("container", "rename", c.id, self._attrs(c, oldName="/" + old))

    # ------------------------------------------------------------------ remove

    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        c = self.get(ref)
        rt = self.runtime(c)
        if c.state.status == "removing":
            raise Conflict(f"removal of container {c.id[:12]} is already in progress")
        if c.state.running:
            if c.state.status == "paused" and not force:
                raise Conflict(f"You cannot remove a paused container {c.id}. Unpause and then "
                               "stop the container before attempting removal or force remove")
            if not force:
                raise Conflict(f"You cannot remove a running container {c.id}. Stop the "
                               "container before attempting removal or force remove")
            c.manual_stop = True
            if rt.restart_task:
                rt.restart_task.cancel()
            if c.state.status == "restarting":
                c.state.status = "exited"
            else:
                if c.state.status == "paused":
                    await self._thaw(c)
                if rt.monitor is not None:
                    try:
                        await rt.monitor.kill(signal.SIGKILL)
                    except Exception:
                        pass
                await rt.exited.wait()
        if c.state.status == "removing":
            raise Conflict(f"removal of container {c.id[:12]} is already in progress")
        self.set_status(c, "removing")
        await self.save(c)
        await self._finish_remove(c, volumes)

    async def _finish_remove(self, c: Container, volumes: bool) -> None:
        rt = self.runtime(c)
        try:
            await self.run(self.layers.remove_rw, c.id)
        except Exception as e:
            c.state.status = "dead"
            c.state.error = f"failed to remove the container's layer: {e}"
            await self.save(c)
            raise EngineError(c.state.error) from e
        try:
            drv = self.plugins.log(c.log_driver)
            await drv.remove(self.log_context(c))
        except Exception:
            pass
        for mp in c.mounts:
            if mp["Type"] == "volume" and (volumes and mp.get("Anonymous")):
                try:
                    await self.plugins.volume(mp.get("Driver") or "local").remove(mp["Name"])
                except Exception as e:
                    log.warning("volume %s not removed: %s", mp["Name"], e)
        for eid in [e for e, x in self.execs.items() if x.container_id == c.id]:
            self.execs.pop(eid, None)
        async with rt.save_lock:  # no write of the record is under way, none starts
            rt.gone = True
            await self.run(_remove_dirs, self.dir(c.id), self.state_dir(c.id))
        self.containers.pop(c.id, None)
        if self.names.get(c.name.lstrip("/")) == c.id:
            self.names.pop(c.name.lstrip("/"), None)
        self.rt.pop(c.id, None)
        rt.removed.set()
        self.events.emit("container", "destroy", c.id, self._attrs(c))

    async def prune(self, filters: dict | None = None) -> dict:
        deleted, space = [], 0
        until = _filter_until(filters)
        for c in list(self.containers.values()):
            if c.state.running or c.state.status == "removing":
                continue
            if until and parse_time(c.created) >= until:
                continue
            if not _labels_match(c.config.get("Labels") or {}, filters):
                continue
            try:
                space += await self.run(self.layers.size_rw, c.id)
            except Exception:
                pass
            await self.remove(c.id)
            deleted.append(c.id)
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": space}

    # ------------------------------------------------------------------ attach

    async def attach(self, ref: str, stdin: bool, stdout: bool, stderr: bool):
        """Return (reader, writer, tty) once the container's output can be read: at
        once when it runs, else when it is next started."""
        c = self.get(ref)
        rt = self.runtime(c)
        if c.state.status == "paused":
            raise Conflict("You cannot attach to a paused container, unpause it first")
        if c.state.status in ("running",) and rt.monitor is not None:
            return await rt.monitor.attach(stdin, stdout, stderr)
        fut = asyncio.get_running_loop().create_future()
        rt.pending_attach.append(({"stdin": stdin, "stdout": stdout, "stderr": stderr}, fut))
        return await fut

    async def resize(self, ref: str, h: int, w: int) -> None:
        c = self.get(ref)
        rt = self.runtime(c)
        if not c.state.running or rt.monitor is None:
            raise Conflict(f"Container {c.id} is not running")
        await rt.monitor.resize(h, w)

    # ------------------------------------------------------------------ exec

    def exec_create(self, ref: str, body: dict) -> str:
        c = self.get(ref)
        if not isinstance(body, dict):
            raise InvalidArgument("exec config must be a JSON object")
        if c.state.status == "paused":
            raise Conflict(f"Container {c.id} is paused, unpause the container before exec")
        if not c.state.running or c.state.status == "restarting":
            raise Conflict(f"Container {c.id} is not running")
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd:
            raise InvalidArgument("No exec command specified")
        eid = new_id()
        self.execs[eid] = ExecRecord(id=eid, container_id=c.id, config={**body, "Cmd": cmd})
        self.events.emit("container", "exec_create", c.id,
                         self._attrs(c, execID=eid, **{"exec": " ".join(cmd)}))
        return eid

    def get_exec(self, eid: str) -> ExecRecord:
        x = self.execs.get(eid)
        if x is None:
            raise NotFound(f"No such exec instance: {eid}")
        return x

    async def exec_start(self, eid: str, detach: bool, tty: bool | None = None):
        """Create the exec's monitor and start the process. Returns the attach stream
        (reader, writer, tty) unless ``detach``."""
        x = self.get_exec(eid)
        if x.running or x.exit_code is not None:
            raise Conflict(f"Error: Exec command {eid} has already run")
        c = self.get(x.container_id)
        rt = self.runtime(c)
        if not c.state.running or rt.monitor is None:
            raise Conflict(f"Container {c.id} is not running")
        cfg = x.config
        use_tty = bool(cfg.get("Tty") if tty is None else tty)
        env = list(c.config.get("Env") or [])
        for e in cfg.get("Env") or []:
            k = e.split("=", 1)[0]
            env = [v for v in env if v.split("=", 1)[0] != k] + [e]
        user = cfg.get("User") or c.config.get("User") or ""
        try:
            process = await self.run(lambda: exec_process(
                c.state.pid, args=cfg["Cmd"], env=env,
                cwd=cfg.get("WorkingDir") or c.config.get("WorkingDir") or "/",
                user=user, tty=use_tty, privileged=bool(cfg.get("Privileged")),
                host_config=c.host_config))
        except ValueError as e:
            x.exit_code = 126  # as Docker: the exec could not be started
            raise InvalidArgument(str(e)) from None
        sdir = self.exec_state_dir(eid)
        sdir.mkdir(parents=True, exist_ok=True)
        try:
            res = await monitor_client.create_exec(
                exec_id=eid, state_dir=str(sdir), target_pid=c.state.pid, process=process,
                cgroups_path=cgroup_path(c.id), runtime=c.runtime, container_id=c.id,
                stdin_open=bool(cfg.get("AttachStdin")) and not detach,
                runc_root=str(self.exec_root / "runc"))
        except monitor_client.MonitorError as e:
            x.exit_code = e.exit_code or 126
            shutil.rmtree(sdir, ignore_errors=True)
            raise _start_error(e, exec_=True) from None
        m = monitor_client.Monitor(str(sdir))
        x.config["_monitor"] = str(sdir)
        size = self._exec_sizes.pop(eid, None)
        if use_tty and size:
            # a resize that came before the process existed: the CLI sends it as soon
            # as the start request is answered
            try:
                await m.resize(*size)
            except monitor_client.MonitorError as e:
                log.warning("exec %s: early resize failed: %s", eid[:12], e)
        stream = None
        if not detach:
            stream = await m.attach(bool(cfg.get("AttachStdin")),
                                    cfg.get("AttachStdout", True) is not False,
                                    cfg.get("AttachStderr", True) is not False)
        try:
            started_pid = await m.start()
        except monitor_client.MonitorError as e:
            x.exit_code = e.exit_code or 126
            shutil.rmtree(sdir, ignore_errors=True)
            if stream:
                stream[1].close()
            raise _start_error(e, exec_=True) from None
        x.running = True
        # runc runs an exec only at start, so the create report may say pid 0
        x.pid = int(started_pid or res.get("pid") or 0)
        self._exec_exited[eid] = asyncio.Event()
        self.events.emit("container", "exec_start", c.id,
                         self._attrs(c, execID=eid, **{"exec": " ".join(cfg["Cmd"])}))
        self._spawn(self._watch_exec(x, m, sdir))
        return stream

    async def _watch_exec(self, x: ExecRecord, m, sdir: Path) -> None:
        try:
            res = await m.wait()
        except Exception:
            res = m.read_exit() or {"exit_code": 255}
        x.running = False
        x.exit_code = int(res.get("exit_code", 255))
        x.pid = 0
        done = self._exec_exited.pop(x.id, None)
        if done:
            done.set()
        shutil.rmtree(sdir, ignore_errors=True)
        c = self.containers.get(x.container_id)
        if c:
            self.events.emit("container", "exec_die", c.id,
                             self._attrs(c, execID=x.id, exitCode=x.exit_code))

    async def exec_wait(self, eid: str, timeout: float = 30.0) -> None:
        """Return once the exec's exit code is recorded (or after ``timeout``).

        The attach stream of an exec ends when the process closes its output, which
        can be a moment before the monitor reports the exit; clients read the exit
        code with an inspect as soon as the stream ends, as Docker lets them."""
        done = self._exec_exited.get(eid)
        if done is None:
            return
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def exec_resize(self, eid: str, h: int, w: int) -> None:
        x = self.get_exec(eid)
        if x.exit_code is not None:
            raise Conflict(f"Exec {eid} is not running")
        if "_monitor" not in x.config:
            self._exec_sizes[eid] = (h, w)  # applied as soon as its monitor exists
            return
        await monitor_client.Monitor(x.config["_monitor"]).resize(h, w)

    def exec_inspect(self, eid: str) -> dict:
        x = self.get_exec(eid)
        cfg = x.config
        return {
            "ID": x.id, "Running": x.running, "ExitCode": x.exit_code,
            "ProcessConfig": {"tty": bool(cfg.get("Tty")), "entrypoint": cfg["Cmd"][0],
                              "arguments": cfg["Cmd"][1:], "privileged": bool(cfg.get("Privileged")),
                              "user": cfg.get("User") or ""},
            "OpenStdin": bool(cfg.get("AttachStdin")), "OpenStderr": bool(cfg.get("AttachStderr", True)),
            "OpenStdout": bool(cfg.get("AttachStdout", True)), "CanRemove": False,
            "ContainerID": x.container_id, "DetachKeys": cfg.get("DetachKeys") or "",
            "Pid": x.pid,
        }

    # ------------------------------------------------------------------ views

    def inspect(self, ref: str, size: bool = False) -> dict:
        c = self.get(ref)
        st = c.state
        hc = dict(c.host_config)
        hc.setdefault("NetworkMode", "default")
        hc.setdefault("LogConfig", {"Type": c.log_driver, "Config": c.log_opts})
        hc["LogConfig"] = {"Type": c.log_driver, "Config": c.log_opts}
        hc.setdefault("RestartPolicy", {"Name": "no", "MaximumRetryCount": 0})
        hc.setdefault("Runtime", c.runtime if c.runtime != "builtin" else "runc")
        cfg = {k: v for k, v in c.config.items()}
        d = self.dir(c.id)
        networks = {k: clean_endpoint(ep) for k, ep in c.networks.items()}
        main_ep = networks.get("bridge") or {}
        out = {
            "Id": c.id, "Created": c.created, "Path": c.path, "Args": c.args,
            "State": {
                "Status": st.status, "Running": st.status in ("running", "paused", "restarting"),
                "Paused": st.status == "paused", "Restarting": st.status == "restarting",
                "OOMKilled": st.oom_killed, "Dead": st.status == "dead", "Pid": st.pid,
                "ExitCode": st.exit_code, "Error": st.error, "StartedAt": st.started_at,
                "FinishedAt": st.finished_at,
            },
            "Image": c.image, "ResolvConfPath": str(d / "resolv.conf"),
            "HostnamePath": str(d / "hostname"), "HostsPath": str(d / "hosts"),
            "LogPath": str(d / f"{c.id}-json.log") if c.log_driver == "json-file" else "",
            "Name": c.name, "RestartCount": c.restart_count, "Driver": self.layers.driver_name
            if hasattr(self.layers, "driver_name") else "overlay2",
            "Platform": c.platform, "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
            "ExecIDs": [e for e, x in self.execs.items() if x.container_id == c.id] or None,
            "HostConfig": hc,
            "GraphDriver": {"Name": "overlay2", "Data": None},
            "Mounts": [{k: v for k, v in m.items() if not k.startswith("_") and k != "Anonymous"}
                       for m in c.mounts],
            "Config": cfg,
            "NetworkSettings": {
                "Bridge": "", "SandboxID": c.id if c.netns else "", "HairpinMode": False,
                "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
                "Ports": ports_view(c),
                "SandboxKey": c.netns, "SecondaryIPAddresses": None,
                "SecondaryIPv6Addresses": None, "EndpointID": main_ep.get("EndpointID", ""),
                "Gateway": main_ep.get("Gateway", ""), "GlobalIPv6Address": "",
                "GlobalIPv6PrefixLen": 0, "IPAddress": main_ep.get("IPAddress", ""),
                "IPPrefixLen": main_ep.get("IPPrefixLen", 0), "IPv6Gateway": "",
                "MacAddress": main_ep.get("MacAddress", ""),
                "Networks": networks,
            },
        }
        if size:
            out["SizeRw"] = self._size_rw(c)
            out["SizeRootFs"] = out["SizeRw"] + self._image_size(c)
        return out

    def _image_size(self, c: Container) -> int:
        """The size of the container's image (0 once it is gone): with SizeRw, Docker's
        SizeRootFs, the "virtual" size ps -s shows."""
        try:
            return int(self.images.summary(self.images.get(c.image)).get("Size") or 0)
        except (NotFound, InvalidArgument):
            return 0

    def _size_rw(self, c: Container) -> int:
        try:
            return int(self.layers.size_rw(c.id))
        except Exception:
            return 0

    def _image_name(self, c: Container) -> str:
        """What ``docker ps`` shows: the reference the container was made from while it
        still names the container's image, else the image id (as Docker)."""
        try:
            if self.images.get(c.image_ref).id == c.image:
                return c.image_ref
        except (NotFound, InvalidArgument):
            pass
        return c.image

    def summary(self, c: Container, size: bool = False) -> dict:
        st = c.state
        out = {
            "Id": c.id, "Names": [c.name], "Image": self._image_name(c), "ImageID": c.image,
            "Command": " ".join([c.path] + c.args), "Created": int(parse_time(c.created)),
            "Ports": ports_summary(c), "Labels": c.config.get("Labels") or {},
            "State": st.status,
            "Status": _status_text(st),
            "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode") or "default"},
            "NetworkSettings": {"Networks": {k: clean_endpoint(ep)
                                             for k, ep in c.networks.items()}},
            "Mounts": [{k: v for k, v in m.items() if not k.startswith("_") and k != "Anonymous"}
                       for m in c.mounts],
        }
        if size:
            out["SizeRw"] = self._size_rw(c)
            out["SizeRootFs"] = out["SizeRw"] + self._image_size(c)
        return out

    def list(self, all_: bool = False, limit: int = -1, filters: dict | None = None,
             size: bool = False) -> list[dict]:
        items = sorted(self.containers.values(), key=lambda c: c.created, reverse=True)
        filters = dict(filters or {})
        # since/before: created after (before) the named container, itself excluded
        since = [self.get(v) for v in _filter_values(filters, "since")]
        before = [self.get(v) for v in _filter_values(filters, "before")]
        filters.pop("since", None)
        filters.pop("before", None)
        out = []
        for c in items:
            if not all_ and not c.state.running and limit <= 0:
                continue
            if any(c.created <= ref.created or c.id == ref.id for ref in since):
                continue
            if any(c.created >= ref.created or c.id == ref.id for ref in before):
                continue
            if filters and not _container_matches(c, filters):
                continue
            out.append(self.summary(c, size))
        if limit > 0:
            out = out[:limit]
        return out


def exec_process(pid: int, *, args: list[str], env: list[str], cwd: str, user: str, tty: bool,
                 privileged: bool, host_config: dict) -> dict:
    """The OCI process object of a ``docker exec`` into the container whose init is
    ``pid``: its user resolved in the container's own passwd, Docker's capabilities."""
    from .runtime import linux

    u = linux.resolve_exec_user(pid, user, tuple(host_config.get("GroupAdd") or ()))
    caps = spec_mod.capabilities({**host_config,
                                  "Privileged": privileged or host_config.get("Privileged")})
    if not any(e.startswith("HOME=") for e in env):
        env = env + [f"HOME={u.home or '/'}"]
    if tty and not any(e.startswith("TERM=") for e in env):
        env = env + ["TERM=xterm"]
    return {
        "terminal": tty,
        "user": {"uid": u.uid, "gid": u.gid, "additionalGids": list(u.additional_gids)},
        "args": list(args), "env": env, "cwd": cwd or "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": spec_mod.rlimits(host_config),
        "noNewPrivileges": spec_mod.no_new_privileges(host_config.get("SecurityOpt") or ()),
    }


# The types of the Config fields the daemon reads (null is always allowed).
_STR, _BOOL, _INT, _DICT = (str,), (bool,), (int,), (dict,)
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "Image": _STR, "Hostname": _STR, "Domainname": _STR, "User": _STR, "WorkingDir": _STR,
    "StopSignal": _STR, "MacAddress": _STR, "Tty": _BOOL, "OpenStdin": _BOOL,
    "StdinOnce": _BOOL, "AttachStdin": _BOOL, "AttachStdout": _BOOL, "AttachStderr": _BOOL,
    "NetworkDisabled": _BOOL, "StopTimeout": _INT, "Labels": _DICT, "ExposedPorts": _DICT,
    "Volumes": _DICT, "HostConfig": _DICT, "NetworkingConfig": _DICT, "Healthcheck": _DICT,
}


def _check_config_types(body: dict) -> None:
    """A 400 for a create body whose fields have the wrong JSON types, as Docker's
    decoder gives, before anything is made from it."""
    for key, types in _CONFIG_TYPES.items():
        v = body.get(key)
        if v is not None and (not isinstance(v, types) or
                              (types is _INT and isinstance(v, bool))):
            raise InvalidArgument(f"invalid JSON: Config.{key} must be of type "
                                  f"{types[0].__name__}, not {type(v).__name__}")
    for key in ("Env", "Shell", "OnBuild"):
        v = body.get(key)
        if v is not None and (not isinstance(v, list) or
                              not all(isinstance(e, str) for e in v)):
            raise InvalidArgument(f"invalid JSON: Config.{key} must be a list of strings")
    for key in ("Cmd", "Entrypoint"):  # Docker's StrSlice: a string or a list of them
        v = body.get(key)
        if v is not None and not isinstance(v, str) and (
                not isinstance(v, list) or not all(isinstance(e, str) for e in v)):
            raise InvalidArgument(f"invalid JSON: Config.{key} must be a string or a list "
                                  "of strings")
    labels = body.get("Labels") or {}
    if not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("invalid JSON: Config.Labels values must be strings")


def _status_text(st: State) -> str:
    """Docker's one-line status (``Up 3 seconds``, ``Exited (0) 5 seconds ago``)."""
    from engine.sdk.format import container_status

    view = {"Running": st.running, "Paused": st.status == "paused",
            "Restarting": st.status == "restarting", "Dead": st.status == "dead",
            "ExitCode": st.exit_code, "Status": st.status}
    return container_status(view, time.time(), parse_time(st.started_at),
                            parse_time(st.finished_at))


def _filter_until(filters: dict | None) -> float:
    if not filters or not filters.get("until"):
        return 0.0
    from .util import parse_since

    vals = filters["until"]
    return parse_since(vals[0] if isinstance(vals, list) else next(iter(vals)))


def _filter_values(filters: dict, key: str) -> list[str]:
    v = filters.get(key) or []
    return list(v) if isinstance(v, (list, tuple)) else [k for k, on in v.items() if on]


def _labels_match(labels: dict, filters: dict | None) -> bool:
    if not filters:
        return True
    for want in _filter_values(filters, "label"):
        k, eq, v = want.partition("=")
        if k not in labels or (eq and labels[k] != v):
            return False
    return True


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error as e:
        raise InvalidArgument(f"invalid filter pattern {pattern!r}: {e}") from None


def _container_matches(c: Container, filters: dict) -> bool:
    for key in filters:
        vals = _filter_values(filters, key)
        if not vals:
            continue
        if key == "id" and not any(c.id.startswith(v) for v in vals):
            return False
        if key == "name" and not any(_search(v, c.name) or _search(v, c.name.lstrip("/"))
                                     for v in vals):
            return False
        if key == "volume" and not any(v in (m.get("Name"), m.get("Source"),
                                             m.get("Destination"))
                                       for v in vals for m in c.mounts):
            return False
        if key == "network" and not any(
                v in c.networks or any(ep.get("NetworkID") == v for ep in c.networks.values())
                for v in vals):
            return False
        if key == "status" and c.state.status not in vals:
            return False
        if key == "exited" and (c.state.status != "exited" or str(c.state.exit_code) not in vals):
            return False
        if key == "ancestor" and not any(v in (c.image_ref, c.image) or c.image.startswith(
                "sha256:" + v) for v in vals):
            return False
        if key == "label" and not _labels_match(c.config.get("Labels") or {}, {"label": vals}):
            return False
    return True


def _resolv_conf(hc: dict, host_net: bool, embedded: list[str] = ()) -> str:
    """The container's resolv.conf: the embedded DNS server of its user-defined network
    when it has one, else the host's resolvers (loopback ones dropped) or ``--dns``."""
    try:
        host = Path("/etc/resolv.conf").read_text()
    except OSError:
        host = ""
    lines = host.splitlines()
    ns = [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1]
    search = [ln for ln in lines if ln.startswith(("search", "domain"))]
    opts = [ln for ln in lines if ln.startswith("options")]
    if not host_net:
        ns = [n for n in ns if not n.startswith("127.") and n != "::1"]
        if not ns:
            ns = ["8.8.8.8", "8.8.4.4"]
    if hc.get("Dns"):
        ns = list(hc["Dns"])
    if embedded:
        ns = list(embedded)
    if hc.get("DnsSearch"):
        search = ["search " + " ".join(hc["DnsSearch"])]
    if hc.get("DnsOptions"):
        opts = ["options " + " ".join(hc["DnsOptions"])]
    return "".join(f"nameserver {n}\n" for n in ns) + "".join(s + "\n" for s in search + opts)


def _fresh_dir(path: Path) -> None:
    """An empty directory at ``path`` (what a previous run left there is removed)."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _remove_dirs(*paths: Path) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def _image_dir(rootfs: str, dest: str) -> str | None:
    """The image's directory at ``dest``, resolved inside ``rootfs``; None when the
    image has none there."""
    from .runtime.rootfs import secure_join

    try:
        path = secure_join(rootfs, dest)
    except (OSError, ValueError):
        return None
    return path if os.path.isdir(path) else None


def _copy_up(src: str, volume_dir: str) -> None:
    """Docker copies what the image has at a volume's path (``src``) into a new empty
    volume."""
    if os.listdir(volume_dir):
        return
    for entry in os.listdir(src):
        s = os.path.join(src, entry)
        d = os.path.join(volume_dir, entry)
        if os.path.isdir(s) and not os.path.islink(s):
            shutil.copytree(s, d, symlinks=True)
        else:
            shutil.copy2(s, d, follow_symlinks=False)
    st = os.stat(src)
    os.chown(volume_dir, st.st_uid, st.st_gid)
    os.chmod(volume_dir, st.st_mode & 0o7777)


def _start_error(e, exec_: bool = False) -> EngineError:
    """A start failure as Docker words it; the CLI maps the words to 126/127."""
    msg = getattr(e, "message", str(e))
    prefix = ("OCI runtime exec failed: exec failed" if exec_ else
              "failed to create task for container: failed to create shim task: OCI runtime "
              "create failed: runc create failed")
    err = InvalidArgument(
        f"{prefix}: unable to start container process: {msg}: unknown"
        if getattr(e, "exit_code", 0) in (126, 127) else msg)
    err.status = 400 if getattr(e, "exit_code", 0) in (126, 127) else 500
    err.exit_code = getattr(e, "exit_code", 0) or 0
    return err
