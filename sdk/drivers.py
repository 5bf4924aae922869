"""Driver base classes and the data types they exchange with the daemon.

Every driver is an async class instantiated once per daemon with a
:class:`DriverContext`. The daemon never hands a driver its own records: inputs are the
small structs below. Optional abilities are separate mix-ins rather than a base class
that grows with every feature.
"""
from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Callable, ClassVar

import msgspec

from .logwriter import LogWriter


class DriverContext(msgspec.Struct, kw_only=True):
    """What a driver gets from the daemon: its own state directory and options."""

    name: str
    state_dir: str
    options: dict[str, str] = {}
    data_root: str = ""   # the daemon's data root, for drivers that keep data there
    exec_root: str = ""   # the daemon's runtime root (sockets, netns files)

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"engine.driver.{self.name}")

    def path(self, *parts: str) -> Path:
        p = Path(self.state_dir).joinpath(*parts)
        return p


class Driver(abc.ABC):
    """Common base: ``name`` is what users type (``--network host``)."""

    name: ClassVar[str] = ""

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx

    async def start(self) -> None:
        """Called once after construction; restore state here."""

    async def stop(self) -> None:
        """Called at daemon shutdown or when the plugin is disabled."""


# ---------------------------------------------------------------- network


class NetworkSpec(msgspec.Struct, kw_only=True):
    id: str
    name: str
    options: dict[str, str] = {}
    ipam: dict[str, Any] = {}
    internal: bool = False
    labels: dict[str, str] = {}


class Sandbox(msgspec.Struct, kw_only=True):
    """The container's network namespace, as a driver sees it."""

    container_id: str
    netns_path: str | None  # None when the container shares the host's namespace
    hostname: str = ""


class EndpointInfo(msgspec.Struct, kw_only=True):
    ip_address: str = ""
    ip_prefix_len: int = 0
    gateway: str = ""
    mac_address: str = ""
    ipv6_address: str = ""
    dns: list[str] = []
    # Published ports as Docker's NetworkSettings.Ports shows them:
    # {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    ports: dict[str, list[dict[str, str]]] = {}
    interface: str = ""   # the interface's name inside the sandbox (eth0, eth1...)


class NetworkDriver(Driver):
    """A network driver.

    ``needs_netns``: False means containers on this network share the host's network
    namespace (``host``); True means the daemon creates a fresh namespace (with only
    ``lo``) and the driver joins an endpoint into it.
    """

    needs_netns: ClassVar[bool] = True
    scope: ClassVar[str] = "local"
    # At most one network of this driver (host, none); created by the daemon at start.
    singleton: ClassVar[bool] = False

    async def create_network(self, network: NetworkSpec) -> None:
        """Create the network (bridge device, IPAM pool...)."""

    async def delete_network(self, network: NetworkSpec) -> None:
        """Delete it; the daemon has checked no endpoint remains."""

    async def join(self, network: NetworkSpec, endpoint_id: str, sandbox: Sandbox,
                   options: dict[str, Any]) -> EndpointInfo:
        """Create an endpoint for the sandbox and plug it in.

        ``options`` may hold (all optional; drivers ignore what they do not support):
        ``names`` (list of DNS names for the endpoint: container name, aliases, short
        id), ``ipv4_address`` (the address the user asked for), ``gateway`` (bool: this
        endpoint provides the default route), ``port_bindings`` (Docker's
        ``HostConfig.PortBindings``), ``exposed_ports``, ``publish_all`` and
        ``dns_servers`` (the container's ``--dns``: where an embedded DNS server
        forwards the names it does not know).
        """
        return EndpointInfo()

    async def leave(self, network: NetworkSpec, endpoint_id: str, sandbox: Sandbox) -> None:
        """Undo :meth:`join`. Must succeed when the namespace is already gone."""


# ---------------------------------------------------------------- volumes


class VolumeInfo(msgspec.Struct, kw_only=True):
    name: str
    mountpoint: str = ""
    created_at: str = ""
    options: dict[str, str] = {}
    labels: dict[str, str] = {}
    status: dict[str, Any] = {}


class VolumeDriver(Driver):
    """A volume driver: named volumes that outlive containers."""

    scope: ClassVar[str] = "local"

    @abc.abstractmethod
    async def create(self, name: str, options: dict[str, str],
                     labels: dict[str, str]) -> VolumeInfo: ...

    @abc.abstractmethod
    async def remove(self, name: str) -> None: ...

    @abc.abstractmethod
    async def get(self, name: str) -> VolumeInfo: ...

    @abc.abstractmethod
    async def list(self) -> list[VolumeInfo]: ...

    @abc.abstractmethod
    async def mount(self, name: str, mount_id: str) -> str:
        """Make the volume available for one container; return the host path."""

    @abc.abstractmethod
    async def unmount(self, name: str, mount_id: str) -> None: ...


# ---------------------------------------------------------------- logs


class LogContext(msgspec.Struct, kw_only=True):
    """Where one container's logs go. Passed to the writer in the monitor process."""

    container_id: str
    container_name: str = ""
    image: str = ""
    log_dir: str          # a directory owned by this container's log
    options: dict[str, str] = {}
    labels: dict[str, str] = {}


class LogEntry(msgspec.Struct, array_like=True):
    stream: str     # "stdout" | "stderr"
    data: bytes     # one line, newline included when the container wrote one
    time_ns: int    # wall clock, nanoseconds since the epoch


class LogDriver(Driver):
    """A log driver.

    ``writer`` names a :class:`~engine.sdk.logwriter.LogWriter` factory as
    ``"module:attribute"``. The monitor process imports it and calls it with the
    :class:`LogContext` as a dict; that module must import nothing heavy (the monitor
    starts with every container): the standard library and ``engine.sdk.logwriter``.
    """

    writer: ClassVar[str] = ""
    can_read: ClassVar[bool] = False

    def validate_options(self, options: dict[str, str]) -> None:
        """Raise ``InvalidArgument`` for an unknown or malformed ``--log-opt``."""

    async def read(self, log: LogContext, *, since_ns: int = 0, until_ns: int = 0,
                   tail: int = -1, follow: bool = False,
                   stopped: Callable[[], bool] | None = None,
                   with_time: bool = True) -> AsyncIterator[LogEntry]:
        """Yield entries in order. ``tail=-1`` means all.

        With ``follow``, keep waiting for new entries; once ``stopped()`` returns True
        (the container has exited and its output is all written), yield what is left
        and return. ``with_time=False`` says the caller shows no times (and asks no
        since/until): a driver may then leave ``time_ns`` at 0 and save the parsing.

        A readable driver implements this or :meth:`read_batches` (or both); each
        has a default built on the other."""
        if type(self).read_batches is LogDriver.read_batches:
            raise NotImplementedError(f"log driver {self.name} implements neither read "
                                      "nor read_batches")
        async for batch in self.read_batches(log, since_ns=since_ns, until_ns=until_ns,
                                             tail=tail, follow=follow, stopped=stopped,
                                             with_time=with_time):
            for e in batch:
                yield e

    async def read_batches(self, log: LogContext, *, since_ns: int = 0, until_ns: int = 0,
                           tail: int = -1, follow: bool = False,
                           stopped: Callable[[], bool] | None = None,
                           with_time: bool = True) -> AsyncIterator[list[LogEntry]]:
        """The entries of :meth:`read`, in order, in lists of what is at hand at once
        (a chunk of a file, what a follower just found); no list is empty. The daemon
        reads through this. The default wraps :meth:`read`, an entry per list; a driver
        whose logs run to millions of lines implements this instead."""
        if type(self).read is LogDriver.read:
            raise NotImplementedError(f"log driver {self.name} implements neither read "
                                      "nor read_batches")
        kw = dict(since_ns=since_ns, until_ns=until_ns, tail=tail, follow=follow,
                  stopped=stopped)
        try:
            entries = self.read(log, **kw, with_time=with_time)
        except TypeError:  # a driver written before ``with_time``
            entries = self.read(log, **kw)
        async for e in entries:
            yield [e]

    async def remove(self, log: LogContext) -> None:
        """Delete what this driver keeps for the container."""


class Registrar:
    """What ``engine_register_drivers`` receives: a place to add driver classes."""

    def __init__(self) -> None:
        self.network: dict[str, type[NetworkDriver]] = {}
        self.volume: dict[str, type[VolumeDriver]] = {}
        self.log: dict[str, type[LogDriver]] = {}

    def _add(self, table: dict, base: type, cls: type) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"{cls!r} is not a {base.__name__}")
        if not cls.name:
            raise ValueError(f"{cls.__name__} has no name")
        table[cls.name] = cls

    def add_network_driver(self, cls: type[NetworkDriver]) -> None:
        self._add(self.network, NetworkDriver, cls)

    def add_volume_driver(self, cls: type[VolumeDriver]) -> None:
        self._add(self.volume, VolumeDriver, cls)

    def add_log_driver(self, cls: type[LogDriver]) -> None:
        self._add(self.log, LogDriver, cls)
