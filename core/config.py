"""Daemon configuration: dockerd's flag names and config-file keys, one Struct."""
from __future__ import annotations

import argparse
import ipaddress
import json
import os

import msgspec

from engine.sdk.errors import InvalidArgument

DEFAULT_SOCKET = "unix:///run/engine/engine.sock"


class Config(msgspec.Struct, kw_only=True, rename="kebab"):
    hosts: list[str] = []
    data_root: str = "/var/lib/engine"
    exec_root: str = "/run/engine"
    log_driver: str = "json-file"
    log_opts: dict[str, str] = {}
    storage_driver: str = ""
    default_runtime: str = "builtin"
    debug: bool = False
    group: str = ""
    live_restore: bool = True
    pidfile: str = ""
    default_network: str = ""
    #: where short plugin names resolve (``127.0.0.1:5000/plugins``); Docker Hub if empty
    plugin_registry: str = ""
    #: registries reached over plain HTTP (or TLS without verification), as dockerd's
    #: ``insecure-registries``: ``host[:port]`` or CIDR networks; loopback always is
    insecure_registries: list[str] = []

    @property
    def socket_paths(self) -> list[str]:
        out = []
        for h in self.hosts or [DEFAULT_SOCKET]:
            if h.startswith("unix://"):
                out.append(h[len("unix://"):])
            elif h.startswith(("tcp://", "http://", "https://")) or ":" in h:
                raise InvalidArgument(
                    f"refusing to listen on {h}: TCP without TLS would give root to anyone "
                    "who can reach it, and TLS is not supported yet; use unix://PATH")
            else:
                out.append(h)
        return out


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="engined", description="The engine daemon.")
    p.add_argument("-H", "--host", action="append", default=None,
                   help="daemon socket to listen on (unix://PATH)")
    p.add_argument("--data-root", help="root of persistent state (default /var/lib/engine)")
    p.add_argument("--exec-root", help="root of runtime state (default /run/engine)")
    p.add_argument("--config-file", help="daemon configuration file (JSON)")
    p.add_argument("-D", "--debug", action="store_true", default=None)
    p.add_argument("--log-driver", help="default log driver for containers")
    p.add_argument("--log-opt", action="append", default=None, help="default log driver options")
    p.add_argument("-s", "--storage-driver", help="overlay or vfs (default: overlay when it works)")
    p.add_argument("--default-runtime", help="builtin or runc")
    p.add_argument("-G", "--group", help="group that owns the socket")
    p.add_argument("-p", "--pidfile")
    p.add_argument("--default-network", help=argparse.SUPPRESS)
    p.add_argument("--plugin-registry", help="registry (and path) short plugin names "
                   "resolve against, e.g. 127.0.0.1:5000/plugins (default: Docker Hub)")
    p.add_argument("--insecure-registry", action="append", default=None,
                   help="registry (host[:port] or CIDR) to reach without verified TLS "
                        "(repeatable)")
    a = p.parse_args(argv)
    cfg = Config()
    path = a.config_file or ("/etc/engine/daemon.json" if os.path.exists("/etc/engine/daemon.json") else None)
    if path:
        try:
            with open(path, "rb") as f:
                cfg = msgspec.json.decode(f.read(), type=Config)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
            raise SystemExit(f"engined: invalid config file {path}: {e}") from None
    if a.host:
        cfg.hosts = a.host
    for key in ("data_root", "exec_root", "log_driver", "storage_driver", "default_runtime",
                "group", "pidfile", "default_network", "plugin_registry"):
        val = getattr(a, key)
        if val:
            setattr(cfg, key, val)
    if a.debug:
        cfg.debug = True
    if a.log_opt:
        for kv in a.log_opt:
            k, _, v = kv.partition("=")
            cfg.log_opts[k] = v
    if a.insecure_registry:
        cfg.insecure_registries = [*cfg.insecure_registries, *a.insecure_registry]
    for entry in cfg.insecure_registries:
        try:
            insecure_registry(entry)
        except ValueError:
            raise SystemExit(f"engined: invalid insecure registry {entry!r}: "
                             "give host[:port] or a CIDR network") from None
    cfg.data_root = os.path.abspath(cfg.data_root)
    cfg.exec_root = os.path.abspath(cfg.exec_root)
    return cfg


def insecure_registry(entry: str) -> str | ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One ``insecure-registries`` entry as dockerd reads it: a CIDR network, or a
    ``host[:port]`` (an ``http://`` or ``https://`` prefix and a trailing ``/``
    tolerated). ValueError when it is neither."""
    host = entry.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
    if not host or "://" in host or any(c.isspace() for c in host):
        raise ValueError(f"invalid insecure registry {entry!r}")
    if "/" in host:
        return ipaddress.ip_network(host, strict=False)
    return host


def dump(cfg: Config) -> str:
    return json.dumps(msgspec.to_builtins(cfg), indent=2)
