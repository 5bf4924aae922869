"""Docker's --user grammar against a fake rootfs (no root needed)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.core.runtime import rootfs as rootfs_mod
from engine.core.runtime import user as user_mod
from engine.core.runtime.user import ExecUser, lookup

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "svc:x:1001:1001::/srv:/bin/false\n"
    "# a comment\n"
    "broken line\n"
)
GROUP = "root:x:0:\nwheel:x:10:app,svc\napp:x:1000:\nsvc:x:1001:\naudio:x:29:app\n"


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def test_empty_user_is_root_with_home(fake_root: Path) -> None:
    assert lookup(str(fake_root), "") == ExecUser(0, 0, [], "/root")


def test_name_gives_primary_and_member_groups(fake_root: Path) -> None:
    assert lookup(str(fake_root), "app") == ExecUser(1000, 1000, [10, 29], "/home/app")


def test_uid_found_in_passwd_uses_its_entry(fake_root: Path) -> None:
    assert lookup(str(fake_root), "1001") == ExecUser(1001, 1001, [10], "/srv")


def test_unknown_uid_is_allowed_with_gid_zero(fake_root: Path) -> None:
    assert lookup(str(fake_root), "4242") == ExecUser(4242, 0, [], "/")


def test_uid_gid_numbers(fake_root: Path) -> None:
    # An explicit group replaces the membership groups (libcontainer's rule).
    assert lookup(str(fake_root), "1000:1000") == ExecUser(1000, 1000, [], "/home/app")


def test_name_and_group_name(fake_root: Path) -> None:
    assert lookup(str(fake_root), "app:wheel") == ExecUser(1000, 10, [], "/home/app")


def test_unknown_user_name_has_dockers_message(fake_root: Path) -> None:
    with pytest.raises(ValueError, match=r"^unable to find user ghost: no matching "
                                         r"entries in passwd file$"):
        lookup(str(fake_root), "ghost")


def test_unknown_group_name(fake_root: Path) -> None:
    with pytest.raises(ValueError, match="unable to find group nope"):
        lookup(str(fake_root), "app:nope")


def test_group_add_names_and_numbers(fake_root: Path) -> None:
    got = lookup(str(fake_root), "app", group_add=("svc", "77", "wheel"))
    assert got.additional_gids == [10, 29, 1001, 77]


def test_group_add_unknown_name(fake_root: Path) -> None:
    with pytest.raises(ValueError, match="unable to find group ghosts"):
        lookup(str(fake_root), "", group_add=("ghosts",))


def test_out_of_range_uid(fake_root: Path) -> None:
    with pytest.raises(ValueError, match="range"):
        lookup(str(fake_root), "99999999999")


def test_missing_files_allow_numbers_only(tmp_path: Path) -> None:
    assert lookup(str(tmp_path), "5:6") == ExecUser(5, 6, [], "/")
    with pytest.raises(ValueError, match="unable to find user app"):
        lookup(str(tmp_path), "app")


def test_symlinked_passwd_cannot_escape_the_root(tmp_path: Path) -> None:
    """/etc/passwd -> /../../host/passwd must resolve inside the rootfs."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("evil:x:0:0::/evil:/bin/sh\n")
    root = tmp_path / "a" / "b" / "root"
    (root / "etc").mkdir(parents=True)
    (root / "host").mkdir()
    (root / "host" / "passwd").write_text("inside:x:7:7::/inside:/bin/sh\n")
    hostile = "/" + "../" * 8 + str(host.relative_to("/")) + "/passwd"
    os.symlink(hostile, root / "etc" / "passwd")
    # Had the host file been read, "evil" would resolve.
    with pytest.raises(ValueError, match="unable to find user evil"):
        lookup(str(root), "evil")
    # The link lands on <root>/<host path>/passwd, which does not exist inside.
    assert lookup(str(root), "7") == ExecUser(7, 0, [], "/")


def test_symlinked_passwd_inside_the_root_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "pw").write_text("inside:x:7:8::/inside:/bin/sh\n")
    os.symlink("/../data/pw", root / "etc" / "passwd")
    assert lookup(str(root), "inside") == ExecUser(7, 8, [], "/inside")


def test_fallback_resolution_without_openat2(tmp_path: Path, monkeypatch) -> None:
    """The secure_join fallback (kernels without openat2) gives the same answers."""
    monkeypatch.setattr(rootfs_mod, "_openat2_missing", True)
    host = tmp_path / "hostpw"
    host.write_text("evil:x:0:0::/evil:/bin/sh\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("../../../../../../" + str(host.relative_to("/")), root / "etc" / "passwd")
    with pytest.raises(ValueError, match="unable to find user evil"):
        lookup(str(root), "evil")


def test_secure_join_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    os.symlink("/../../etc", root / "a" / "up")
    os.symlink("../../../b", root / "rel")
    join = rootfs_mod.secure_join
    assert join(str(root), "/a/up/passwd") == str(root / "etc" / "passwd")
    assert join(str(root), "rel/c") == str(root / "b" / "c")
    assert join(str(root), "../../..") == str(root)
    os.symlink("loop", root / "loop")
    with pytest.raises(OSError, match="too many symlinks"):
        join(str(root), "/loop")


def test_parsers_skip_malformed_lines() -> None:
    entries = user_mod.parse_passwd("a:x:1:2::/h:/bin/sh\nbad\nb:x:notnum:2::/:x\n")
    assert [e.name for e in entries] == ["a"]
    groups = user_mod.parse_group("g:x:5:a, b ,\nbad:x\n")
    assert groups == [user_mod.GroupEntry("g", 5, ["a", "b"])]
