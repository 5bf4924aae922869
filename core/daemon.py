"""The composition root: config -> plugin host -> stores -> services -> API.

``engined`` listens on a unix socket (mode 0660), keeps persistent state under the data
root and runtime state under the exec root, and stops cleanly on SIGTERM or SIGINT.
Containers keep running when the daemon stops: their monitors outlive it, and the
next daemon picks them up again (live restore).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config, parse_args

log = logging.getLogger("engine.daemon")


@dataclass
class Services:
    config: Config
    daemon_id: str
    content: object
    layers: object
    images: object
    plugins: object
    events: object
    containers: object
    networks: object = None


def _lock(data_root: str) -> int:
    """One daemon per data root: a second one fails at once with a clear message."""
    os.makedirs(data_root, exist_ok=True)
    fd = os.open(os.path.join(data_root, "engine.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"engined: another daemon is using {data_root}") from None
    return fd


def _daemon_id(data_root: str) -> str:
    p = Path(data_root, "engine.id")
    try:
        return p.read_text().strip()
    except FileNotFoundError:
        from .util import atomic_write, new_id

        ident = new_id()[:32]
        atomic_write(p, ident.encode())
        return ident


async def build(cfg: Config) -> Services:
    from .containers import ContainerService
    from .events import Events
    from .networks import NetworkService
    from .plugins import PluginHost
    from .store.content import ContentStore
    from .store.images import ImageStore
    from .store.layers import LayerStore

    root = cfg.data_root
    for d in (root, cfg.exec_root):
        os.makedirs(d, mode=0o711, exist_ok=True)
    content = ContentStore(os.path.join(root, "content"))
    layers = LayerStore(os.path.join(root, "layers"), cfg.storage_driver or "auto")
    images = ImageStore(os.path.join(root, "images"), content, layers)
    plugins = PluginHost(root, cfg.exec_root, plugin_registry=cfg.plugin_registry,
                         insecure_registries=cfg.insecure_registries)
    plugins.discover()
    await plugins.start_drivers()
    events = Events()
    networks = NetworkService(data_root=root, exec_root=cfg.exec_root, plugins=plugins,
                              events=events)
    await networks.start()
    containers = ContainerService(
        data_root=root, exec_root=cfg.exec_root, images=images, layers=layers,
        plugins=plugins, events=events, default_log_driver=cfg.log_driver,
        default_log_opts=cfg.log_opts, default_runtime=cfg.default_runtime,
        default_network=cfg.default_network, networks=networks)
    networks.containers = containers
    await containers.restore()
    return Services(config=cfg, daemon_id=_daemon_id(root), content=content, layers=layers,
                    images=images, plugins=plugins, events=events, containers=containers,
                    networks=networks)


@contextlib.contextmanager
def _without_ca_store():
    """Hide the system CA store, and frozenlist's C++ extension, while aiohttp loads.

    Importing aiohttp's client side builds two default client TLS contexts, and each
    loads every certificate of the system store: 40 ms and 2 MB that the daemon never
    uses (the registry client passes a context of its own with every request, see
    ``engine.registry.client.RegistryHosts.ssl_context``). OpenSSL reads the store's
    location from the environment when a context loads it, so the location is hidden
    while aiohttp is imported and put back at once. The same goes for frozenlist's
    C++ extension (aiohttp's signal lists): it maps libstdc++ for nothing the daemon
    needs fast, 1 MB, so its pure-Python twin is asked for.
    """
    saved = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "SSL_CERT_DIR",
                                             "FROZENLIST_NO_EXTENSIONS")}
    os.environ["SSL_CERT_FILE"] = os.devnull
    os.environ["SSL_CERT_DIR"] = os.devnull
    os.environ["FROZENLIST_NO_EXTENSIONS"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _defer_aiohttp_client() -> None:
    """Load the aiohttp package without running its ``__init__`` until it is needed.

    ``aiohttp/__init__.py`` imports the whole client (sessions, connector, cookie jar,
    digest auth, form data...): 4 MB imported on its own, 2 MB of the idle daemon's
    RSS, which serves the API with ``aiohttp.web`` alone and uses the client only to
    pull, push or install a plugin.
    So the package goes into ``sys.modules`` bare (its path, spec and version, which
    is all ``aiohttp.web`` and its submodules take from it), and the first lookup of
    any other name on it (``aiohttp.ClientSession``, ``from aiohttp import
    ClientTimeout``) runs the real ``__init__`` in that same module, once, under a lock,
    before answering. Nothing changes for code that uses aiohttp: it only pays later.
    Whatever does not look like the package we know is left to the normal import.
    That late ``__init__`` runs with the environment as it is: hiding the CA store
    then (as at start, see :func:`_without_ca_store`) would hide it from any process
    another thread starts meanwhile. So the first pull pays for aiohttp's default
    TLS contexts with the rest of the client (some 60 ms, once).
    """
    if "aiohttp" in sys.modules:
        return
    import importlib.machinery
    import importlib.util
    import re
    import threading

    spec = importlib.util.find_spec("aiohttp")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return
    try:
        with open(spec.origin, encoding="utf-8") as f:
            version = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
    except OSError:
        return
    if version is None:
        return
    pkg = importlib.util.module_from_spec(spec)
    pkg.__version__ = version.group(1)
    lock = threading.Lock()

    def __getattr__(name: str):
        if (name.startswith("__") and name.endswith("__")
                or importlib.machinery.PathFinder.find_spec(name, pkg.__path__)):
            raise AttributeError(name)  # a submodule: the import system loads it
        with lock:
            if pkg.__dict__.get("__getattr__") is __getattr__:
                del pkg.__getattr__  # the real __init__ runs once, and may define its own
                spec.loader.exec_module(pkg)
        return getattr(pkg, name)

    pkg.__getattr__ = __getattr__
    sys.modules["aiohttp"] = pkg


def _import_web():
    """Import aiohttp's server, and only its server (see the two helpers above)."""
    with _without_ca_store():
        _defer_aiohttp_client()
        from aiohttp import web

        from .api.app import make_app
    return web, make_app


async def serve(cfg: Config, ready: asyncio.Event | None = None) -> None:
    web, make_app = _import_web()

    t0 = time.monotonic()
    services = await build(cfg)
    app = make_app(services)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    paths = cfg.socket_paths
    for path in paths:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # we hold the data-root lock: a leftover socket is stale
        site = web.UnixSite(runner, path)
        await site.start()
        os.chmod(path, 0o660)
        if cfg.group:
            try:
                os.chown(path, 0, grp.getgrnam(cfg.group).gr_gid)
            except KeyError:
                log.warning("group %s not found; socket stays root-only", cfg.group)
    pidfile = cfg.pidfile or os.path.join(cfg.exec_root, "engined.pid")
    Path(pidfile).write_text(f"{os.getpid()}\n")
    log.info("engined ready in %.0f ms on %s", (time.monotonic() - t0) * 1000, ", ".join(paths))
    if ready is not None:
        ready.set()
    # the monitors' fork server: started now, off the start-up path, so that the first
    # container does not pay for its Python start
    from .runtime import client as monitor_client

    warm = asyncio.get_running_loop().run_in_executor(
        None, lambda: monitor_client.fork_server().ensure_started())
    warm.add_done_callback(lambda _f: asyncio.get_running_loop().call_later(0.2, _trim))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    try:
        await warm
    except Exception as e:  # monitors fall back to a plain spawn
        log.warning("monitor fork server did not start: %s", e)
    log.info("shutting down (containers keep running)")
    for c in services.containers.rt.values():
        if c.watch_task:
            c.watch_task.cancel()
    await runner.cleanup()
    await services.plugins.stop_drivers()
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass


def _trim() -> None:
    """Once start-up is over, hand the memory the imports left behind back to the
    kernel: a small box runs the daemon for months."""
    import ctypes
    import gc

    gc.collect()
    gc.freeze()  # what survived start-up is long-lived: keep it out of later collections
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        cfg.socket_paths  # refuse TCP before anything else
    except Exception as e:
        print(f"engined: {e}", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("engined: must run as root", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.DEBUG if cfg.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _lock(cfg.data_root)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        asyncio.run(serve(cfg))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
