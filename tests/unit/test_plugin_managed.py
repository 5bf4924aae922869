"""Docker managed plugins without root: the config read as Go reads it, privileges
computed as Docker does, the runtime spec made of exactly those privileges, mount
points scoped to the host, rootfs archives packed and unpacked safely, the store, and
references resolved against the plugin registry."""
from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import tarfile
from pathlib import Path

import pytest

from engine.core import managed
from engine.core.managed import (
    ManagedPlugin,
    ManagedStore,
    NotSupported,
    driver_kinds,
    driver_name,
    local_name,
    pack_rootfs,
    parse_config,
    plugin_spec,
    privileges,
    scope_path,
    unpack_rootfs,
)
from engine.core.plugin_dist import (
    PY_CONFIG_MEDIA_TYPE,
    classify,
    python_config,
    resolve,
)
from engine.core.plugins import PluginHost, _scoped_volume_driver, _unpack_context
from engine.sdk.drivers import VolumeInfo
from engine.sdk.errors import InvalidArgument

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "managed-volume"

# the shape of a real plugin's config (vieux/sshfs), keys as Docker writes them
SSHFS = {
    "description": "sshFS plugin for Docker",
    "documentation": "https://docs.docker.com/engine/extend/plugins/",
    "entrypoint": ["/docker-volume-sshfs"],
    "env": [{"name": "DEBUG", "settable": ["value"], "value": "0"}],
    "interface": {"socket": "sshfs.sock", "types": ["docker.volumedriver/1.0"]},
    "linux": {"capabilities": ["CAP_SYS_ADMIN"],
              "devices": [{"path": "/dev/fuse"}]},
    "mounts": [{"destination": "/mnt/state", "options": ["rbind"], "name": "state",
                "source": "/var/lib/docker/plugins/", "settable": ["source"],
                "type": "bind"}],
    "network": {"type": "host"},
    "propagatedMount": "/mnt/volumes",
}


def test_config_keys_in_any_case_become_dockers_spelling():
    cfg = parse_config(json.dumps(SSHFS))
    assert cfg["Interface"] == {"Socket": "sshfs.sock", "Types": ["docker.volumedriver/1.0"],
                                "ProtocolScheme": ""}
    assert cfg["PropagatedMount"] == "/mnt/volumes"
    assert cfg["Linux"]["Devices"] == [{"Path": "/dev/fuse"}]
    assert cfg["Mounts"][0]["Source"] == "/var/lib/docker/plugins/"
    assert cfg["Env"] == [{"Name": "DEBUG", "Settable": ["value"], "Value": "0"}]
    # every field is there afterwards, empty when the config leaves it out
    assert cfg["IpcHost"] is False and cfg["User"] == {} and cfg["Args"]["Value"] == []
    assert parse_config(cfg) == cfg  # canonical form is stable


@pytest.mark.parametrize("change, message", [
    ({"interface": {"types": [], "socket": "x.sock"}}, "Interface.Types is empty"),
    ({"interface": {"types": ["docker.volumedriver/1.0"], "socket": "a/b.sock"}},
     "must name a socket file"),
    ({"entrypoint": []}, "Entrypoint is empty"),
    ({"entrypoint": "/bin/plugin"}, "list of strings"),
    ({"propagatedMount": "relative"}, "absolute path"),
    ({"mounts": [{"source": "/x"}]}, "no Destination"),
    ({"user": {"uid": "root"}}, "User.UID must be a number"),
    ({"linux": {"capabilities": ["CAP_NOPE"]}}, 'unknown capability: "CAP_NOPE"'),
])
def test_invalid_configs_are_refused_with_the_field_named(change, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_config(json.dumps({**SSHFS, **change}), "plugin/config.json")
    with pytest.raises(InvalidArgument, match="invalid JSON"):
        parse_config(b"{", "plugin/config.json")


def test_privileges_as_docker_computes_them():
    assert privileges(parse_config(SSHFS)) == [
        {"Name": "network", "Description": "permissions to access a network",
         "Value": ["host"]},
        {"Name": "mount", "Description": "host path to mount",
         "Value": ["/var/lib/docker/plugins/"]},
        {"Name": "device", "Description": "host device to access", "Value": ["/dev/fuse"]},
        {"Name": "capabilities", "Description": "list of additional capabilities required",
         "Value": ["CAP_SYS_ADMIN"]},
    ]
    every = parse_config({**SSHFS, "network": {"type": "bridge"}, "ipchost": True,
                          "pidHost": True, "mounts": [{"destination": "/tmp", "type": "tmpfs"}],
                          "linux": {"allowAllDevices": True}})
    assert [(p["Name"], p["Value"]) for p in privileges(every)] == [
        ("host ipc namespace", ["true"]), ("host pid namespace", ["true"]),
        ("allow-all-devices", ["true"])]


def test_interfaces_map_to_driver_kinds_or_are_refused():
    cfg = parse_config({**SSHFS, "interface": {"socket": "p.sock", "types": [
        "docker.volumedriver/1.0", "docker.networkdriver/1.0"]}})
    assert driver_kinds(cfg) == ["volume", "network"]
    ipam = parse_config({**SSHFS, "interface": {"socket": "p.sock",
                                                "types": ["docker.ipamdriver/1.0"]}})
    with pytest.raises(NotSupported, match="docker.ipamdriver/1.0 is not supported"):
        driver_kinds(ipam)
    # a network plugin with its own IPAM (weaveworks/net-plugin): the network driver
    # asks the plugin for pools and addresses
    weave = parse_config({**SSHFS, "interface": {"socket": "weave.sock", "types": [
        "docker.networkdriver/1.0", "docker.ipamdriver/1.0"]}})
    assert driver_kinds(weave) == ["network"]


def test_names():
    assert local_name("vieux/sshfs") == "vieux/sshfs:latest"
    assert local_name("localhost:5000/x:1.0") == "localhost:5000/x:1.0"
    assert local_name("localhost:5000/x") == "localhost:5000/x:latest"
    assert driver_name("weaveworks/net-plugin:latest") == "weaveworks/net-plugin"
    assert driver_name("x:2.0") == "x:2.0"


def test_the_example_directory_is_a_valid_managed_plugin(tmp_path):
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "config.json").write_bytes((EXAMPLE / "config.json").read_bytes())
    assert managed.is_managed_dir(tmp_path)
    cfg = managed.read_plugin_dir(tmp_path)
    assert [(p["Name"], p["Value"]) for p in privileges(cfg)] == [
        ("network", ["host"]), ("capabilities", ["CAP_SYS_ADMIN"])]
    with pytest.raises(InvalidArgument, match="no rootfs"):
        managed.read_plugin_dir(EXAMPLE)
    # a rootfs that is a link (to the host's /, say) is not a plugin's own
    (tmp_path / "rootfs").rmdir()
    (tmp_path / "rootfs").symlink_to("/")
    assert not managed.is_managed_dir(tmp_path)
    with pytest.raises(InvalidArgument, match="no rootfs"):
        managed.read_plugin_dir(tmp_path)


def _plugin(**config) -> ManagedPlugin:
    return ManagedPlugin(id="ab" * 32, name="sshfs:latest", config=parse_config({**SSHFS,
                                                                                **config}))


def test_the_spec_carries_exactly_the_plugins_privileges(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    p = _plugin(args={"name": "args", "value": ["-v"]}, user={"uid": 1000, "gid": 1000},
                workdir="/work")
    spec = plugin_spec(p, rootfs=str(rootfs), socket_dir="/run/engine/plugins/abab",
                       propagated="/var/lib/engine/plugins/managed/x/propagated-mount")
    proc = spec["process"]
    assert proc["args"] == ["/docker-volume-sshfs", "-v"]
    assert "DEBUG=0" in proc["env"] and proc["cwd"] == "/work"
    assert (proc["user"]["uid"], proc["user"]["gid"]) == (1000, 1000)
    assert "CAP_SYS_ADMIN" in proc["capabilities"]["bounding"]
    assert "CAP_SYS_MODULE" not in proc["capabilities"]["bounding"]
    kinds = {ns["type"] for ns in spec["linux"]["namespaces"]}
    assert "network" not in kinds and "uts" not in kinds and "pid" in kinds  # host network
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/run/docker/plugins"]["source"] == "/run/engine/plugins/abab"
    assert mounts["/mnt/state"]["source"] == "/var/lib/docker/plugins/"
    assert "rbind" in mounts["/mnt/state"]["options"]
    assert mounts["/mnt/volumes"]["source"].endswith("/propagated-mount")
    # shared both ways, so that the plugin's own mounts there reach the host
    assert "rshared" in mounts["/mnt/volumes"]["options"]
    assert spec["linux"]["rootfsPropagation"] == "rshared"
    assert spec["annotations"]["org.engine.plugin.name"] == "sshfs:latest"
    assert spec["linux"]["cgroupsPath"] == f"/engine-plugins/{p.id}"

    unset = _plugin(mounts=[{"name": "state", "destination": "/state", "type": "bind",
                             "settable": ["source"]}])
    with pytest.raises(InvalidArgument, match="set it with plugin set state.source=PATH"):
        plugin_spec(unset, rootfs=str(rootfs), socket_dir="/s", propagated=None)

    private = plugin_spec(_plugin(network={"type": ""}, pidhost=True,
                                  linux={"allowAllDevices": True}, mounts=[]),
                          rootfs=str(rootfs), socket_dir="/s", propagated=None)
    kinds = {ns["type"] for ns in private["linux"]["namespaces"]}
    assert "network" in kinds and "pid" not in kinds
    assert private["linux"]["resources"]["devices"][-1] == {"allow": True, "access": "rwm"}


def test_mount_points_are_scoped_to_the_host():
    p = _plugin()
    root, prop = "/data/managed/x/rootfs", "/data/managed/x/propagated-mount"
    assert scope_path(p, root, prop, "/mnt/volumes/v1") == f"{prop}/v1"
    assert scope_path(p, root, prop, "/data/v1") == f"{root}/data/v1"
    assert scope_path(p, root, None, "/mnt/volumes/v1") == f"{root}/mnt/volumes/v1"
    with pytest.raises(Exception, match="outside its root"):
        scope_path(p, root, prop, "/data/../../../etc")


def test_a_scoped_remote_volume_driver_answers_host_paths():
    class Fake:
        def __init__(self, ctx=None) -> None:
            pass

        async def mount(self, name: str, mount_id: str) -> str:
            return f"/vols/{name}"

        async def path(self, name: str) -> str:
            return f"/vols/{name}"

        async def get(self, name: str) -> VolumeInfo:
            return VolumeInfo(name=name, mountpoint=f"/vols/{name}")

        async def list(self) -> list[VolumeInfo]:
            return [VolumeInfo(name="a", mountpoint="/vols/a")]

    drv = _scoped_volume_driver(Fake, lambda p: "/host" + p)()

    async def go() -> list[str]:
        return [await drv.mount("v", "c1"), await drv.path("v"),
                (await drv.get("v")).mountpoint, (await drv.list())[0].mountpoint]

    assert asyncio.run(go()) == ["/host/vols/v", "/host/vols/v", "/host/vols/v",
                                 "/host/vols/a"]


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info in entries:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def test_rootfs_archives_round_trip_and_are_reproducible(tmp_path):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "bin" / "tool").chmod(0o755)
    (src / "bin" / "alias").symlink_to("tool")
    (src / "empty").mkdir()
    with socket.socket(socket.AF_UNIX) as left_over:  # a plugin's socket is left out
        left_over.bind(str(src / "empty" / "p.sock"))
    one, two = io.BytesIO(), io.BytesIO()
    digest, diff_id, size = pack_rootfs(src, one)
    assert pack_rootfs(src, two)[:2] == (digest, diff_id)
    assert size == len(one.getvalue()) and digest.startswith("sha256:")
    out = tmp_path / "out"
    unpack_rootfs(io.BytesIO(one.getvalue()), out)
    assert (out / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.readlink(out / "bin" / "alias") == "tool"
    assert (out / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert (out / "empty").is_dir() and not (out / "empty" / "p.sock").exists()


@pytest.mark.parametrize("entries, message", [
    ([_member("../evil")], "outside the root"),
    ([_member("link", tarfile.SYMTYPE, "/etc"), _member("link/passwd")], "symbolic link"),
    ([_member("hard", tarfile.LNKTYPE, "../../etc/passwd")], "hard link"),
])
def test_rootfs_archives_cannot_write_outside_the_root(tmp_path, entries, message):
    with pytest.raises(InvalidArgument, match=message):
        unpack_rootfs(io.BytesIO(_tar(entries, {"link/passwd": b"x"})), tmp_path / "root")
    assert not (tmp_path / "evil").exists()


def test_a_context_with_config_and_rootfs_keeps_its_links(tmp_path):
    config = json.dumps(SSHFS).encode()
    entries = [_member("plugin", tarfile.DIRTYPE), _member("plugin/config.json"),
               _member("plugin/rootfs", tarfile.DIRTYPE),
               _member("plugin/rootfs/sh", tarfile.SYMTYPE, "busybox")]
    src = _unpack_context(_tar(entries, {"plugin/config.json": config}), tmp_path)
    assert src == tmp_path / "plugin"
    assert managed.is_managed_dir(src) and os.readlink(src / "rootfs" / "sh") == "busybox"


def test_the_store_makes_plugins_visible_only_when_complete(tmp_path):
    store = ManagedStore(tmp_path)
    cfg = parse_config(SSHFS)

    def broken(rootfs: Path) -> None:
        (rootfs / "half").write_text("x")
        raise InvalidArgument("download failed")

    with pytest.raises(InvalidArgument):
        store.add("sshfs:latest", "", cfg, broken)
    assert store.load() == [] and list(store.root.iterdir()) == []
    p = store.add("sshfs:latest", "docker.io/vieux/sshfs:latest", cfg,
                  lambda r: (r / "bin").mkdir())
    p.enabled = True
    store.save(p)
    (loaded,) = store.load()
    assert (loaded.id, loaded.name, loaded.enabled, loaded.config) == (p.id, p.name, True, cfg)
    assert loaded.to_api()["Config"]["Interface"]["Socket"] == "sshfs.sock"
    assert loaded.to_api()["Settings"]["Env"] == ["DEBUG=0"]
    store.remove(p.id)
    assert store.load() == []


def test_the_host_lists_and_finds_managed_plugins(tmp_path):
    store = ManagedStore(tmp_path / "data")
    p = store.add("vieux/sshfs:latest", "", parse_config(SSHFS), lambda r: None)
    host = PluginHost(str(tmp_path / "data"), str(tmp_path / "run"), autoload=False)
    host.discover()
    assert host.get("vieux/sshfs") is host.get("vieux/sshfs:latest")
    assert host.get(p.id[:12]).name == "vieux/sshfs:latest"
    assert any(r.name == "vieux/sshfs:latest" for r in host.all())


def test_short_names_resolve_against_the_plugin_registry():
    assert resolve("weave-net") == ("docker.io/library/weave-net:latest", "weave-net:latest")
    assert resolve("net-dummy", "127.0.0.1:5000/plugins") == (
        "127.0.0.1:5000/plugins/net-dummy:latest", "net-dummy:latest")
    # the docker CLI normalises before sending: Docker Hub names map back
    assert resolve("docker.io/library/net-dummy:latest", "127.0.0.1:5000/plugins")[0] == \
        "127.0.0.1:5000/plugins/net-dummy:latest"
    assert resolve("localhost:5000/x:1.0", "127.0.0.1:5000/plugins") == (
        "localhost:5000/x:1.0", "localhost:5000/x:1.0")
    with pytest.raises(InvalidArgument):
        resolve("Bad Name")


def test_manifests_are_classified_by_their_config_media_type():
    layer = {"mediaType": "x", "size": 3, "digest": "sha256:" + "a" * 64}

    def manifest(config_type: str, layers=(layer,)) -> dict:
        return {"config": {"mediaType": config_type}, "layers": list(layers)}

    assert classify("r/p:1", manifest(PY_CONFIG_MEDIA_TYPE), "")[0] == "python"
    assert classify("r/p:1", manifest(managed.CONFIG_MEDIA_TYPE), "")[0] == "managed"
    with pytest.raises(InvalidArgument, match="not a plugin: it is a container image"):
        classify("busybox", manifest("application/vnd.oci.image.config.v1+json"), "")
    with pytest.raises(InvalidArgument, match="exactly one layer"):
        classify("r/p", manifest(PY_CONFIG_MEDIA_TYPE, (layer, layer)), "")
    with pytest.raises(InvalidArgument, match="multi-platform"):
        classify("r/p", {}, "application/vnd.oci.image.index.v1+json")
    cfg = json.loads(python_config("engine-net-dummy", "1.0.0", {"net-dummy": "m"},
                                   {"description": "d", "privileges": []}, "x.whl"))
    assert cfg["entryPoints"] == {"net-dummy": "m"} and cfg["wheel"] == "x.whl"


def test_a_start_that_fails_before_the_process_leaves_nothing(tmp_path):
    store = ManagedStore(tmp_path / "data")
    p = store.add("sshfs:latest", "", parse_config({**SSHFS, "mounts": []}), lambda r: None)
    p.config["Linux"]["Capabilities"] = ["CAP_GONE"]  # as an older engine might have kept
    runner = managed.ManagedRunner(tmp_path / "run", store, lambda: "")
    with pytest.raises(InvalidArgument, match="CAP_GONE"):
        asyncio.run(runner.start(p))
    assert not runner.socket_dir(p).exists() and not runner.state_dir(p).exists()


def test_settings_change_only_what_the_config_lets_change():
    cfg = parse_config({**SSHFS, "args": {"name": "args", "settable": ["value"], "value": []},
                        "mounts": [{"name": "state", "source": "/var/lib/x",
                                    "destination": "/state", "settable": ["source"]}],
                        "linux": {"devices": [{"name": "fuse", "path": "/dev/fuse"}]}})
    out = managed.apply_settings(cfg, ["DEBUG=1", "args=-v --fast", "state.source=/srv/s"])
    assert out["Env"][0]["Value"] == "1" and out["Args"]["Value"] == ["-v", "--fast"]
    assert out["Mounts"][0]["Source"] == "/srv/s"
    assert cfg["Env"][0]["Value"] == "0"  # a copy: the stored config is not touched
    # a mount source that changes is a privilege that changes
    assert ("mount", ["/srv/s"]) in [(p["Name"], p["Value"]) for p in privileges(out)]
    with pytest.raises(InvalidArgument, match="not found"):
        managed.apply_settings(cfg, ["NOPE=1"])
    with pytest.raises(InvalidArgument, match="not settable"):
        managed.apply_settings(cfg, ["fuse.path=/dev/x"])
    with pytest.raises(InvalidArgument, match="NAME=VALUE"):
        managed.apply_settings(cfg, ["DEBUG"])
