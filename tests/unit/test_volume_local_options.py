"""The local volume driver's ``type``/``device``/``o`` options, without root: parsing and
validation, address resolution, and the mount reference counting with the mount
syscalls replaced by a recorder."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.plugins.volume import bind as bind_mod
from engine.plugins.volume import localopts
from engine.plugins.volume.bind import LocalDriver
from engine.plugins.volume.localopts import (
    MS_BIND,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    LocalMount,
    parse_options,
    ram_in_bytes,
    resolved,
    split_mount_options,
)
from engine.sdk.drivers import DriverContext
from engine.sdk.errors import Conflict, DriverError, InvalidArgument


# ---------------------------------------------------------------- parsing


def test_no_options_is_a_plain_directory():
    assert parse_options({}) is None
    assert parse_options({"size": "0"}) is None


def test_tmpfs_options():
    m = parse_options({"type": "tmpfs", "device": "tmpfs", "o": "size=16m,uid=1000"})
    assert m == LocalMount("tmpfs", "tmpfs", "size=16m,uid=1000")
    assert m.parsed.flags == 0 and m.parsed.data == "size=16m,uid=1000"


def test_unknown_key_is_named():
    with pytest.raises(InvalidArgument, match='invalid option: "fstype"'):
        parse_options({"fstype": "tmpfs", "device": "tmpfs"})


@pytest.mark.parametrize("opts, missing", [
    ({"type": "tmpfs"}, "device"),
    ({"device": "tmpfs"}, "type"),
    ({"o": "size=1m", "type": "tmpfs"}, "device"),
    ({"o": "size=1m", "device": "x"}, "type"),
])
def test_required_companions(opts, missing):
    with pytest.raises(InvalidArgument, match=f'missing required option: "{missing}"'):
        parse_options(opts)


@pytest.mark.parametrize("o", ["size=abc", "size=", "size", "mode=999", "uid=bob",
                               "nr_inodes=1x"])
def test_malformed_tmpfs_values(o):
    with pytest.raises(InvalidArgument, match="invalid tmpfs option"):
        parse_options({"type": "tmpfs", "device": "tmpfs", "o": o})


@pytest.mark.parametrize("o", ["size=16m", "size=50%", "size=1G,mode=1777,uid=0,gid=0",
                               "nr_inodes=1k,noexec"])
def test_wellformed_tmpfs_values(o):
    assert parse_options({"type": "tmpfs", "device": "tmpfs", "o": o}) is not None


def test_quota_size_is_refused_without_quota_support():
    assert ram_in_bytes("16m") == 16 << 20
    assert ram_in_bytes("1.5GiB") == 3 << 29
    with pytest.raises(InvalidArgument, match="no quota support"):
        parse_options({"size": "10m"})
    with pytest.raises(InvalidArgument, match="invalid size: 'ten'"):
        parse_options({"size": "ten"})


def test_bind_device_must_be_an_existing_directory(tmp_path):
    ok = parse_options({"type": "none", "o": "bind", "device": str(tmp_path)})
    assert ok is not None and ok.parsed.is_bind
    with pytest.raises(InvalidArgument, match="not an existing directory"):
        parse_options({"type": "none", "o": "bind", "device": str(tmp_path / "nope")})
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="not an existing directory"):
        parse_options({"type": "none", "o": "bind", "device": str(tmp_path / "file")})
    with pytest.raises(InvalidArgument, match="absolute"):
        parse_options({"type": "none", "o": "bind", "device": "relative/dir"})


def test_cifs_device_port_is_refused():
    with pytest.raises(InvalidArgument, match="port not allowed in CIFS"):
        parse_options({"type": "cifs", "device": "//files.example:445/share", "o": "user=u"})
    assert parse_options({"type": "cifs", "device": "//files.example/share", "o": "port=445"})


def test_mount_option_words_split_into_flags_and_data():
    opts = split_mount_options("ro,nosuid,size=16m,rprivate,mode=755")
    assert opts.flags == MS_RDONLY | MS_NOSUID
    assert opts.propagation == MS_PRIVATE | MS_REC
    assert opts.data == "size=16m,mode=755"
    assert split_mount_options("ro,rw").flags == 0  # a later word clears an earlier one
    assert split_mount_options("rbind,ro").flags & MS_BIND
    assert split_mount_options("defaults,,").data == ""


# ---------------------------------------------------------------- addresses


def test_nfs_addr_is_resolved_unless_it_is_ipv4():
    asked: list[str] = []

    def resolve(host: str) -> str:
        asked.append(host)
        return "192.0.2.7"

    m = LocalMount("nfs", ":/export", "addr=nfs.example,clientaddr=nfs.example,rw")
    assert resolved(m, resolve).options == "addr=192.0.2.7,clientaddr=nfs.example,rw"
    same = LocalMount("nfs", ":/export", "addr=192.0.2.1,rw")
    assert resolved(same, resolve) is same
    assert asked == ["nfs.example"]
    tmpfs = LocalMount("tmpfs", "tmpfs", "addr=whatever")
    assert resolved(tmpfs, resolve) is tmpfs


def test_cifs_host_is_resolved_and_failures_are_clear():
    m = LocalMount("cifs", "//files.example/share", "user=u")
    assert resolved(m, lambda h: "192.0.2.9").device == "//192.0.2.9/share"

    def fail(host: str) -> str:
        raise OSError(f"no address for {host}")

    with pytest.raises(DriverError, match="error resolving passed in network volume address"):
        resolved(LocalMount("nfs", ":/x", "addr=nowhere.invalid"), fail)


def test_the_real_resolver_knows_localhost():
    assert localopts.resolve_host("localhost") in ("127.0.0.1", "::1")


def test_failed_mount_masks_the_password(monkeypatch):
    def fail(source, target, fstype, flags, data):
        raise OSError(13, f"mount {source}:{target}, data: {data}: permission denied")

    monkeypatch.setattr(localopts, "_sys_mount", fail)
    m = LocalMount("cifs", "//192.0.2.9/share", "username=u,password=hunter2")
    with pytest.raises(DriverError) as e:
        localopts.mount_volume(m, "/nowhere")
    assert "hunter2" not in str(e.value)
    assert "password=********" in str(e.value)
    assert str(e.value).startswith("failed to mount local volume: mount //192.0.2.9/share")


def test_a_failed_ro_remount_unmounts_again(monkeypatch):
    calls: list[tuple] = []

    def sys_mount(source, target, fstype, flags, data):
        calls.append(("mount", flags))
        if len(calls) == 2:
            raise OSError(1, "remount refused")

    monkeypatch.setattr(localopts, "_sys_mount", sys_mount)
    monkeypatch.setattr(localopts, "unmount_volume", lambda t: calls.append(("umount", t)))
    with pytest.raises(DriverError, match="remount refused"):
        localopts.mount_volume(LocalMount("none", "/src", "bind,ro"), "/dst")
    assert calls[-1] == ("umount", "/dst")


# ---------------------------------------------------------------- the driver


class Recorder:
    """Stands in for the mount syscalls: what is mounted where, and the calls."""

    def __init__(self) -> None:
        self.mounted: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(bind_mod, "mount_volume", self.mount)
        monkeypatch.setattr(bind_mod, "unmount_volume", self.unmount)
        monkeypatch.setattr(bind_mod, "is_mounted", lambda p: p in self.mounted)

    def mount(self, spec: LocalMount, target: str) -> None:
        self.calls.append(("mount", target))
        self.mounted.add(target)

    def unmount(self, target: str) -> None:
        self.calls.append(("unmount", target))
        self.mounted.discard(target)


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    rec = Recorder()
    rec.install(monkeypatch)
    return rec


def _driver(tmp_path: Path) -> LocalDriver:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return LocalDriver(DriverContext(name="local", state_dir=str(state)))


TMPFS = {"type": "tmpfs", "device": "tmpfs", "o": "size=16m"}


def test_create_validates_and_keeps_the_options(tmp_path):
    async def body() -> None:
        d = _driver(tmp_path)
        with pytest.raises(InvalidArgument, match='invalid option: "bogus"'):
            await d.create("vol", {"bogus": "1"}, {})
        assert not (tmp_path / "state" / "vol").exists()
        info = await d.create("vol", dict(TMPFS), {"team": "a"})
        assert info.options == TMPFS
        # a daemon restart: a new driver reads the options back
        again = _driver(tmp_path)
        await again.start()
        assert (await again.get("vol")).options == TMPFS
        assert [v.options for v in await again.list()] == [TMPFS]
    asyncio.run(body())


def test_mount_is_counted_per_mount_id(tmp_path, recorder):

    async def body() -> None:
        d = _driver(tmp_path)
        info = await d.create("vol", dict(TMPFS), {})
        data = info.mountpoint
        assert await d.mount("vol", "c1") == data
        assert await d.mount("vol", "c1") == data      # the same holder again: no change
        assert await d.mount("vol", "c2") == data
        assert recorder.calls == [("mount", data)]
        await d.unmount("vol", "c1")
        await d.unmount("vol", "unknown")
        assert data in recorder.mounted
        with pytest.raises(Conflict, match="in use"):
            await d.remove("vol")
        # the holders survive a daemon restart while the filesystem stays mounted
        d2 = _driver(tmp_path)
        await d2.start()
        await d2.unmount("vol", "c2")
        assert recorder.calls == [("mount", data), ("unmount", data)]
        await d2.remove("vol")
        assert not Path(data).exists()
    asyncio.run(body())


def test_holders_are_forgotten_when_nothing_is_mounted_at_start(tmp_path, recorder):

    async def body() -> None:
        d = _driver(tmp_path)
        await d.create("vol", dict(TMPFS), {})
        await d.mount("vol", "c1")
        recorder.mounted.clear()          # the host rebooted
        d2 = _driver(tmp_path)
        await d2.start()
        await d2.mount("vol", "c9")
        assert recorder.calls.count(("mount", (await d2.get("vol")).mountpoint)) == 2
    asyncio.run(body())


def test_a_failed_mount_records_no_holder(tmp_path, recorder, monkeypatch):

    def refuse(spec, target):
        raise DriverError("failed to mount local volume: mount tmpfs:x: no such device")

    monkeypatch.setattr(bind_mod, "mount_volume", refuse)

    async def body() -> None:
        d = _driver(tmp_path)
        await d.create("vol", {"type": "nosuchfs", "device": "x"}, {})
        with pytest.raises(DriverError, match="no such device"):
            await d.mount("vol", "c1")
        await d.remove("vol")   # not held: it goes
    asyncio.run(body())


def test_plain_volumes_mount_nothing(tmp_path, recorder):

    async def body() -> None:
        d = _driver(tmp_path)
        info = await d.create("plain", {}, {})
        assert await d.mount("plain", "c1") == info.mountpoint
        await d.unmount("plain", "c1")
        await d.remove("plain")
    asyncio.run(body())
    assert recorder.calls == []
