"""Writer half of the ``local`` log driver; runs in each container's monitor.

Standard library only."""
from __future__ import annotations

import os
from typing import Any

from engine.sdk.logwriter import LogWriter

from ._base import with_mode
from ._localfile import LocalFileWriter, Rotation


def create(ctx: dict[str, Any]) -> LogWriter:
    """The monitor's entry point: a writer for the container described by ``ctx``."""
    path = os.path.join(ctx["log_dir"], "local-logs", "container.log")
    opts = ctx.get("options") or {}
    return with_mode(LocalFileWriter(path, Rotation(path, opts)), ctx)
