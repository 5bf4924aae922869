"""This process's mounts, as ``/proc/self/mountinfo`` lists them.

Standard library only: the kernel's runtime (in the containers' set-up too), the
plugin runner and the volume drivers read mounts through here.
"""
from __future__ import annotations

import re

_OCTAL = re.compile(r"\\([0-7]{3})")


def mount_points() -> list[str]:
    """Every mount point of this mount namespace, unescaped (``\\040`` is a space)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ", 5)
            if len(fields) < 5:
                continue
            point = fields[4]
            if "\\" in point:
                point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), point)
            points.append(point)
    return points


def is_mount_point(path: str) -> bool:
    """Whether something is mounted on ``path`` (an absolute path, symlinks resolved
    by the caller). Unlike ``os.path.ismount``, this sees a directory bound onto itself
    or another directory of the same filesystem."""
    return path in mount_points()


def mount_point_of(path: str) -> str:
    """The mount point of the mount that holds ``path``: the longest mount point that
    is ``path`` or above it."""
    best = "/"
    for point in mount_points():
        if (path == point or path.startswith(point.rstrip("/") + "/")) \
                and len(point) > len(best):
            best = point
    return best
