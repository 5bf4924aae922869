"""Records the kernel persists, as msgspec Structs. New fields get defaults, so state
written by an older daemon still decodes."""
from __future__ import annotations

from typing import Any

import msgspec

from .util import ZERO_TIME


class State(msgspec.Struct, kw_only=True):
    status: str = "created"   # created running paused restarting removing exited dead
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    oom_killed: bool = False
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused", "restarting")


# The legal transitions of the lifecycle: anything else is a bug or a race.
TRANSITIONS: dict[str, set[str]] = {
    "created": {"running", "removing", "exited", "dead"},
    "running": {"paused", "exited", "removing", "restarting", "dead"},
    "paused": {"running", "exited", "dead", "removing"},
    "restarting": {"running", "exited", "removing", "dead"},
    "exited": {"running", "removing", "restarting", "dead"},
    "removing": {"dead", "exited", "running"},
    "dead": {"removing"},
}


class Container(msgspec.Struct, kw_only=True):
    id: str
    name: str                       # with the leading "/" as Docker keeps it
    created: str
    image: str                      # image id, "sha256:..."
    image_ref: str                  # what the user asked for
    path: str = ""
    args: list[str] = []
    config: dict[str, Any] = {}     # Docker's Config, merged with the image's
    host_config: dict[str, Any] = {}
    state: State = msgspec.field(default_factory=State)
    restart_count: int = 0
    runtime: str = "builtin"
    log_driver: str = "json-file"
    log_opts: dict[str, str] = {}
    mounts: list[dict[str, Any]] = []     # Docker's MountPoint objects
    networks: dict[str, dict[str, Any]] = {}   # name -> EndpointSettings
    netns: str = ""
    manual_stop: bool = False
    has_been_started: bool = False
    platform: str = "linux"


class ExecRecord(msgspec.Struct, kw_only=True):
    id: str
    container_id: str
    config: dict[str, Any]
    running: bool = False
    exit_code: int | None = None
    pid: int = 0
    can_remove: bool = False
