"""Reference parsing and normalisation, as Docker's distribution/reference does it."""

from __future__ import annotations

import pytest
from engine.core.store.reference import Reference, familiar, normalize, parse
from engine.sdk.errors import InvalidArgument

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "ref,expected",
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
        ("index.docker.io/me/app", "docker.io/me/app:latest"),
        ("me/app:v1.2_3-x", "docker.io/me/app:v1.2_3-x"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/a/b/c:tag", "localhost:5000/a/b/c:tag"),
        ("registry.example.com/team/app", "registry.example.com/team/app:latest"),
        ("my-app__x.y", "docker.io/library/my-app__x.y:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1@{DIGEST}", f"docker.io/library/busybox:1@{DIGEST}"),
    ],
)
def test_normalize(ref, expected):
    assert normalize(ref) == expected


def test_parse_fields_and_familiar():
    r = parse("localhost:5000/team/app:v1")
    assert r == Reference("localhost:5000", "team/app", "v1", "")
    assert r.name == "localhost:5000/team/app"
    assert familiar("docker.io/library/busybox:latest") == "busybox:latest"
    assert familiar("docker.io/me/app:v1") == "me/app:v1"
    assert familiar("localhost:5000/team/app:v1") == "localhost:5000/team/app:v1"
    assert familiar(f"docker.io/library/busybox@{DIGEST}") == f"busybox@{DIGEST}"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Busybox",
        "me/App",
        "a/../b",
        "..",
        "../x",
        "a..b",
        "-a",
        "a-",
        "a//b",
        "a/",
        ":tag",
        "a:",
        "a:-tag",
        "a:" + "t" * 129,
        "a b",
        "a@sha256:123",
        "a@" + "x" * 70,
        "/abs",
        "a" * 256,
        "a\x00b",
    ],
)
def test_invalid_references(bad):
    with pytest.raises(InvalidArgument):
        parse(bad)
