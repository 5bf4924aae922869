"""Docker's ``--user`` grammar, resolved against the container's own passwd and group.

``name``, ``uid``, ``name:group``, ``uid:gid`` (and mixes) are looked up in the
rootfs's ``/etc/passwd`` and ``/etc/group`` only: no NSS, and the files are opened
inside the rootfs (a symlinked ``/etc/passwd`` cannot reach the host's files). The
rules follow libcontainer's ``GetExecUser``, which is what Docker uses:

* an empty spec is root (uid 0, gid 0, home ``/``);
* a name must exist in passwd; a number need not (then gid 0 and home ``/``);
* without an explicit group, the supplementary groups are those that list the user
  by name in /etc/group; with one, there are none;
* ``group_add`` (``HostConfig.GroupAdd``) names or numbers are appended.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from engine.core.runtime import rootfs as _rootfs

_MAX_ID = 2**31 - 1


class ExecUser(NamedTuple):
    """The result of :func:`lookup`."""

    uid: int
    gid: int
    additional_gids: list[int]
    home: str


class PasswdEntry(NamedTuple):
    name: str
    uid: int
    gid: int
    home: str


class GroupEntry(NamedTuple):
    name: str
    gid: int
    members: list[str]


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Entries of a passwd file; malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 4:
            continue
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            continue
        home = fields[5] if len(fields) > 5 else ""
        entries.append(PasswdEntry(fields[0], uid, gid, home))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    """Entries of a group file; malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 3:
            continue
        try:
            gid = int(fields[2])
        except ValueError:
            continue
        members = [m.strip() for m in fields[3].split(",")] if len(fields) > 3 else []
        entries.append(GroupEntry(fields[0], gid, [m for m in members if m]))
    return entries


def _number(text: str) -> int | None:
    if not text.isdigit():
        return None
    value = int(text)
    if value > _MAX_ID:
        raise ValueError(f"uids and gids must be in range 0-{_MAX_ID}")
    return value


def resolve(passwd: list[PasswdEntry] | None, groups: list[GroupEntry] | None,
            user_spec: str, group_add: list[str] | tuple[str, ...] = ()) -> ExecUser:
    """Resolve ``user_spec`` against parsed passwd and group entries.

    ``None`` for a file means it does not exist in the image.
    """
    user_arg, _, group_arg = user_spec.partition(":")
    uid, gid, home = 0, 0, "/"
    name: str | None = None

    if user_arg:
        wanted = _number(user_arg)
        match = next((p for p in passwd or () if
                      (p.uid == wanted if wanted is not None else p.name == user_arg)), None)
        if match is not None:
            uid, gid, home, name = match.uid, match.gid, match.home or "/", match.name
        elif wanted is not None:
            uid = wanted
        else:
            raise ValueError(f"unable to find user {user_arg}: no matching entries in passwd file")
    elif passwd:
        root = next((p for p in passwd if p.uid == 0), None)
        if root is not None:
            gid, home, name = root.gid, root.home or "/", root.name

    additional: list[int] = []
    if group_arg:
        wanted = _number(group_arg)
        match_g = next((g for g in groups or () if
                        (g.gid == wanted if wanted is not None else g.name == group_arg)), None)
        if match_g is not None:
            gid = match_g.gid
        elif wanted is not None:
            gid = wanted
        else:
            raise ValueError(
                f"unable to find group {group_arg}: no matching entries in group file")
    elif name is not None:
        additional = [g.gid for g in groups or () if name in g.members]

    for extra in group_add:
        number = _number(str(extra))
        if number is None:
            match_g = next((g for g in groups or () if g.name == extra), None)
            if match_g is None:
                raise ValueError(
                    f"unable to find group {extra}: no matching entries in group file")
            number = match_g.gid
        additional.append(number)

    unique: list[int] = []
    for g in additional:
        if g not in unique:
            unique.append(g)
    return ExecUser(uid, gid, unique, home)


def lookup(rootfs: str, user_spec: str,
           group_add: list[str] | tuple[str, ...] = ()) -> ExecUser:
    """Resolve Docker's ``--user`` value against the image at ``rootfs``.

    Returns ``(uid, gid, additional_gids, home)``. ``rootfs`` may also be
    ``/proc/PID/root`` of a running container. Raises :class:`ValueError` with Docker's
    messages for unknown names.
    """
    passwd_raw = group_raw = None
    if os.path.isdir(rootfs):
        passwd_raw = _rootfs.read_in_root(rootfs, "/etc/passwd")
        group_raw = _rootfs.read_in_root(rootfs, "/etc/group")
    passwd = None if passwd_raw is None else parse_passwd(passwd_raw.decode(errors="replace"))
    groups = None if group_raw is None else parse_group(group_raw.decode(errors="replace"))
    return resolve(passwd, groups, user_spec.strip(), group_add)
