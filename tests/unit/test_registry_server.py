"""The registry server over HTTP (in-process, loopback): the spec's endpoints, error
codes, pagination, content negotiation, auth and read-only mode."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from engine.registry import spec
from engine.registry.htpasswd import Access, Htpasswd, bcrypt_hash
from engine.registry.server import Settings, main, make_app
from engine.registry.token import TokenService

API = "Docker-Distribution-API-Version"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run(settings: Settings, test: Callable[[TestClient], Awaitable[None]]) -> None:
    async def go() -> None:
        async with TestClient(TestServer(make_app(settings))) as client:
            await test(client)

    asyncio.run(go())


async def errors(resp) -> list[str]:
    return [e["code"] for e in (await resp.json())["errors"]]


async def push_blob(client: TestClient, name: str, data: bytes, headers=None) -> str:
    resp = await client.post(f"/v2/{name}/blobs/uploads/?digest={digest(data)}", data=data,
                             headers=headers)
    assert resp.status == 201, await resp.text()
    return digest(data)


async def push_image(client: TestClient, name: str, tag: str, headers=None) -> str:
    cfg = await push_blob(client, name, b"{}", headers)
    layer = await push_blob(client, name, b"layer of " + tag.encode(), headers)
    body = json.dumps({"schemaVersion": 2, "mediaType": spec.MT_DOCKER_MANIFEST,
                       "config": {"mediaType": spec.MT_DOCKER_CONFIG, "digest": cfg, "size": 2},
                       "layers": [{"mediaType": spec.MT_DOCKER_LAYER_GZIP, "digest": layer,
                                   "size": 1}]}).encode()
    resp = await client.put(f"/v2/{name}/manifests/{tag}", data=body,
                            headers={"Content-Type": spec.MT_DOCKER_MANIFEST, **(headers or {})})
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest(body)
    return digest(body)


def test_base_endpoint_announces_the_api_version(tmp_path):
    async def t(client: TestClient) -> None:
        resp = await client.get("/v2/")
        assert resp.status == 200
        assert resp.headers[API] == "registry/2.0"
        resp = await client.get("/v2/a/b/nothing")
        assert resp.status == 404 and resp.headers[API] == "registry/2.0"

    run(Settings(tmp_path), t)


def test_chunked_upload_status_and_range_reads(tmp_path):
    data = b"0123456789" * 1000

    async def t(client: TestClient) -> None:
        resp = await client.post("/v2/team/app/blobs/uploads/")
        assert resp.status == 202
        location = resp.headers["Location"]
        assert resp.headers["Range"] == "0-0"
        resp = await client.patch(location, data=data[:4000],
                                  headers={"Content-Range": "0-3999"})
        assert resp.status == 202 and resp.headers["Range"] == "0-3999"
        location = resp.headers["Location"]
        # a chunk that does not start where the upload ends
        resp = await client.patch(location, data=data[5000:6000],
                                  headers={"Content-Range": "5000-5999"})
        assert resp.status == 416
        assert await errors(resp) == ["BLOB_UPLOAD_INVALID"]
        resp = await client.get(location)
        assert resp.status == 204 and resp.headers["Range"] == "0-3999"
        # a streamed chunk (no Content-Range), then the final PUT carries the rest
        resp = await client.patch(location, data=data[4000:9000])
        assert resp.headers["Range"] == "0-8999"
        resp = await client.put(f"{location}?digest={digest(data)}", data=data[9000:])
        assert resp.status == 201
        assert resp.headers["Docker-Content-Digest"] == digest(data)
        blob = f"/v2/team/app/blobs/{digest(data)}"
        resp = await client.head(blob)
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(data)
        resp = await client.get(blob, headers={"Range": "bytes=100-199"})
        assert resp.status == 206 and await resp.read() == data[100:200]
        assert (await (await client.get(blob)).read()) == data

    run(Settings(tmp_path), t)


def test_bad_digest_and_unknown_blobs(tmp_path):
    async def t(client: TestClient) -> None:
        resp = await client.post(f"/v2/app/blobs/uploads/?digest={digest(b'x')}", data=b"y")
        assert resp.status == 400 and await errors(resp) == ["DIGEST_INVALID"]
        resp = await client.get(f"/v2/app/blobs/{digest(b'y')}")
        assert resp.status == 404 and await errors(resp) == ["BLOB_UNKNOWN"]
        resp = await client.get("/v2/app/blobs/sha256:short")
        assert resp.status == 400 and await errors(resp) == ["DIGEST_INVALID"]
        resp = await client.post("/v2/Bad/Name/blobs/uploads/")
        assert resp.status == 400 and await errors(resp) == ["NAME_INVALID"]
        resp = await client.patch("/v2/app/blobs/uploads/6f1f4a55-0000-4000-8000-000000000000",
                                  data=b"x")
        assert resp.status == 404 and await errors(resp) == ["BLOB_UPLOAD_UNKNOWN"]
        assert not list((tmp_path / "blobs" / "sha256").iterdir())

    run(Settings(tmp_path), t)


def test_manifests_tags_and_negotiation(tmp_path):
    async def t(client: TestClient) -> None:
        d = await push_image(client, "app", "v1")
        resp = await client.get("/v2/app/manifests/v1",
                                headers={"Accept": f"{spec.MT_OCI_MANIFEST}, "
                                                   f"{spec.MT_DOCKER_MANIFEST}"})
        assert resp.status == 200
        assert resp.headers["Content-Type"] == spec.MT_DOCKER_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == d
        assert digest(await resp.read()) == d
        resp = await client.head(f"/v2/app/manifests/{d}")
        assert resp.status == 200 and resp.headers["Docker-Content-Digest"] == d
        resp = await client.get("/v2/app/manifests/v1", headers={"Accept": spec.MT_OCI_INDEX})
        assert resp.status == 404 and await errors(resp) == ["MANIFEST_UNKNOWN"]
        resp = await client.get("/v2/app/manifests/nope")
        assert resp.status == 404 and await errors(resp) == ["MANIFEST_UNKNOWN"]
        resp = await client.put("/v2/app/manifests/v2", data=json.dumps({
            "schemaVersion": 2, "mediaType": spec.MT_DOCKER_MANIFEST,
            "config": {"digest": digest(b"missing"), "size": 1}, "layers": []}),
            headers={"Content-Type": spec.MT_DOCKER_MANIFEST})
        assert resp.status == 400 and await errors(resp) == ["MANIFEST_BLOB_UNKNOWN"]
        big = b"{" + b" " * (spec.MANIFEST_LIMIT + 1) + b"}"
        resp = await client.put("/v2/app/manifests/v3", data=big)
        assert resp.status == 413 and await errors(resp) == ["SIZE_INVALID"]
        resp = await client.put("/v2/app/manifests/-bad", data=b"{}")
        assert resp.status == 400 and await errors(resp) == ["TAG_INVALID"]
        resp = await client.delete("/v2/app/manifests/v1")
        assert resp.status == 202
        assert (await (await client.get("/v2/app/tags/list")).json())["tags"] == []

    run(Settings(tmp_path), t)


def test_tag_and_catalog_pagination(tmp_path):
    async def t(client: TestClient) -> None:
        for tag in ("c", "a", "b", "d"):
            await push_image(client, "app", tag)
        await push_image(client, "z/other", "x")
        resp = await client.get("/v2/app/tags/list?n=2")
        assert (await resp.json()) == {"name": "app", "tags": ["a", "b"]}
        assert resp.headers["Link"] == '</v2/app/tags/list?n=2&last=b>; rel="next"'
        resp = await client.get("/v2/app/tags/list?n=2&last=b")
        assert (await resp.json())["tags"] == ["c", "d"]
        assert "Link" not in resp.headers
        resp = await client.get("/v2/_catalog?n=1")
        assert (await resp.json()) == {"repositories": ["app"]}
        assert "last=app" in resp.headers["Link"]
        resp = await client.get("/v2/_catalog?n=5&last=app")
        assert (await resp.json()) == {"repositories": ["z/other"]}
        resp = await client.get("/v2/nothing/tags/list")
        assert resp.status == 404 and await errors(resp) == ["NAME_UNKNOWN"]

    run(Settings(tmp_path), t)


def test_cross_repository_mount(tmp_path):
    async def t(client: TestClient) -> None:
        blob = await push_blob(client, "src", b"shared layer")
        resp = await client.post(f"/v2/dst/blobs/uploads/?mount={blob}&from=src")
        assert resp.status == 201 and resp.headers["Docker-Content-Digest"] == blob
        assert (await client.head(f"/v2/dst/blobs/{blob}")).status == 200
        # unknown source blob: an ordinary upload session starts instead
        resp = await client.post(f"/v2/dst/blobs/uploads/?mount={digest(b'no')}&from=src")
        assert resp.status == 202 and "/blobs/uploads/" in resp.headers["Location"]

    run(Settings(tmp_path), t)


def test_referrers_endpoint(tmp_path):
    async def t(client: TestClient) -> None:
        subject = await push_image(client, "app", "v1")
        empty = await push_blob(client, "app", b"{}")
        sig = json.dumps({"schemaVersion": 2, "mediaType": spec.MT_OCI_MANIFEST,
                          "artifactType": "application/x.sig",
                          "config": {"mediaType": spec.MT_OCI_EMPTY, "digest": empty,
                                     "size": 2},
                          "layers": [], "subject": {"mediaType": spec.MT_DOCKER_MANIFEST,
                                                    "digest": subject, "size": 1}}).encode()
        resp = await client.put(f"/v2/app/manifests/{digest(sig)}", data=sig,
                                headers={"Content-Type": spec.MT_OCI_MANIFEST})
        assert resp.status == 201 and resp.headers["OCI-Subject"] == subject
        resp = await client.get(f"/v2/app/referrers/{subject}")
        assert resp.headers["Content-Type"].startswith(spec.MT_OCI_INDEX)
        index = await resp.json()
        assert index["mediaType"] == spec.MT_OCI_INDEX
        assert [m["digest"] for m in index["manifests"]] == [digest(sig)]
        resp = await client.get(f"/v2/app/referrers/{subject}?artifactType=application/x.no")
        assert resp.headers["OCI-Filters-Applied"] == "artifactType"
        assert (await resp.json())["manifests"] == []

    run(Settings(tmp_path), t)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def auth_settings(tmp_path: Path, tokens: TokenService | None = None) -> Settings:
    """alice may pull and push anything, bob pull anything and push bob/*, anonymous
    users pull public/*."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt_hash('secret')}\nbob:{bcrypt_hash('hunter2')}\n")
    access = tmp_path / "access.json"
    access.write_text(json.dumps({"alice": {"pull": ["*"], "push": ["*"]},
                                  "bob": {"pull": ["*"], "push": ["bob/*"]},
                                  "anonymous": {"pull": ["public/*"]}}))
    return Settings(tmp_path / "reg", htpasswd=Htpasswd(htpasswd), access=Access.load(access),
                    tokens=tokens)


def test_htpasswd_and_per_repository_access(tmp_path):
    settings = auth_settings(tmp_path)

    async def t(client: TestClient) -> None:
        resp = await client.get("/v2/")
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic ")
        assert await errors(resp) == ["UNAUTHORIZED"]
        assert (await client.get("/v2/", headers=basic("alice", "wrong"))).status == 401
        assert (await client.get("/v2/", headers=basic("alice", "secret"))).status == 200
        await push_image(client, "public/app", "v1", basic("alice", "secret"))
        # anonymous may pull public/*, not push
        assert (await client.get("/v2/public/app/manifests/v1")).status == 200
        assert (await client.post("/v2/public/app/blobs/uploads/")).status == 401
        # bob may push to bob/* only
        resp = await client.post("/v2/public/app/blobs/uploads/", headers=basic("bob", "hunter2"))
        assert resp.status == 403 and await errors(resp) == ["DENIED"]
        await push_image(client, "bob/app", "v1", basic("bob", "hunter2"))
        resp = await client.get("/v2/_catalog", headers=basic("bob", "hunter2"))
        assert (await resp.json())["repositories"] == ["bob/app", "public/app"]

    run(settings, t)



async def get_token(client: TestClient, *scopes: str, headers=None) -> dict[str, str]:
    resp = await client.get("/token", params=[("service", "engine-registry"),
                                              *[("scope", sc) for sc in scopes]],
                            headers=headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token"] == body["access_token"] and body["expires_in"] > 0
    return {"Authorization": f"Bearer {body['token']}"}


def test_token_service_grants_what_the_rules_allow(tmp_path):
    """Docker's token flow: the challenge names the realm, service and scope; the token
    grants the asked actions the access rules allow (less, not an error); every request
    is checked against its token."""
    async def t(client: TestClient) -> None:
        resp = await client.get("/v2/")
        challenge = resp.headers["WWW-Authenticate"]
        assert resp.status == 401 and challenge.startswith("Bearer realm=\"http://")
        assert '/token",service="engine-registry"' in challenge
        # basic credentials are for the token service only
        assert (await client.get("/v2/", headers=basic("alice", "secret"))).status == 401
        assert (await client.get("/token", headers=basic("alice", "wrong"))).status == 401
        alice = await get_token(client, "repository:team/app:pull,push",
                                headers=basic("alice", "secret"))
        assert (await client.get("/v2/", headers=alice)).status == 200
        await push_image(client, "team/app", "v1", alice)
        # the token is for team/app only: another repository asks for a new one
        resp = await client.get("/v2/other/manifests/v1", headers=alice)
        assert resp.status == 401
        assert 'scope="repository:other:pull",error="insufficient_scope"' in \
            resp.headers["WWW-Authenticate"]
        # bob may pull team/app but not push it: his token grants pull alone
        bob = await get_token(client, "repository:team/app:pull,push",
                              headers=basic("bob", "hunter2"))
        assert (await client.get("/v2/team/app/manifests/v1", headers=bob)).status == 200
        resp = await client.post("/v2/team/app/blobs/uploads/", headers=bob)
        assert resp.status == 401 and await errors(resp) == ["UNAUTHORIZED"]
        # anonymous tokens carry what anonymous users may do
        anon = await get_token(client, "repository:public/x:pull", "repository:team/app:pull")
        assert (await client.get("/v2/team/app/manifests/v1", headers=anon)).status == 401
        # a cross-repository mount needs pull on the source, in the same token
        mount = "/v2/public/x/blobs/uploads/?mount={}&from=team/app"
        layer = digest(b"layer of v1")
        both = await get_token(client, "repository:public/x:pull,push",
                               "repository:team/app:pull", headers=basic("alice", "secret"))
        resp = await client.post(mount.format(layer), headers=both)
        assert resp.status == 201 and resp.headers["Docker-Content-Digest"] == layer
        # the catalog wants its own scope
        resp = await client.get("/v2/_catalog", headers=alice)
        assert resp.status == 401 and "registry:catalog:*" in resp.headers["WWW-Authenticate"]
        cat = await get_token(client, "registry:catalog:*", headers=basic("alice", "secret"))
        resp = await client.get("/v2/_catalog", headers=cat)
        assert (await resp.json())["repositories"] == ["team/app"]  # (x has no manifest)
        # forged, tampered or foreign tokens are refused
        tampered = alice["Authorization"][:-2] + ("AA" if not alice["Authorization"].endswith(
            "AA") else "BB")
        for bad in ("Bearer nonsense", tampered,
                    "Bearer " + TokenService().issue("alice", [])["token"]):
            resp = await client.get("/v2/", headers={"Authorization": bad})
            assert resp.status == 401 and await errors(resp) == ["UNAUTHORIZED"], bad
        # the OAuth2 password grant (containerd's way) works too
        resp = await client.post("/token", data={
            "grant_type": "password", "username": "alice", "password": "secret",
            "service": "engine-registry", "scope": "repository:team/app:pull"})
        token = (await resp.json())["access_token"]
        assert (await client.get("/v2/team/app/manifests/v1",
                                 headers={"Authorization": f"Bearer {token}"})).status == 200
        resp = await client.post("/token", data={"grant_type": "password",
                                                 "username": "alice", "password": "no"})
        assert resp.status == 401

    run(auth_settings(tmp_path, TokenService()), t)


def test_expired_tokens_are_refused(tmp_path, monkeypatch):
    settings = auth_settings(tmp_path, TokenService(ttl=60))

    async def t(client: TestClient) -> None:
        alice = await get_token(client, "repository:a:pull", headers=basic("alice", "secret"))
        assert (await client.get("/v2/", headers=alice)).status == 200
        later = time.time() + 61
        monkeypatch.setattr("engine.registry.token.time.time", lambda: later)
        resp = await client.get("/v2/", headers=alice)
        assert resp.status == 401 and "expired" in (await resp.json())["errors"][0]["message"]

    run(settings, t)


def test_token_command_line_needs_users_or_rules(tmp_path):
    with pytest.raises(SystemExit, match="--token needs"):
        main(["serve", "--root", str(tmp_path), "--token"])
    short = tmp_path / "secret"
    short.write_bytes(b"too short")
    (tmp_path / "htpasswd").write_text(f"alice:{bcrypt_hash('secret')}\n")
    with pytest.raises(SystemExit, match="at least 32 bytes"):
        main(["serve", "--root", str(tmp_path), "--htpasswd", str(tmp_path / "htpasswd"),
              "--token", "--token-secret-file", str(short)])


def test_read_only_mode_refuses_writes(tmp_path):
    async def fill(client: TestClient) -> None:
        await push_image(client, "app", "v1")

    run(Settings(tmp_path), fill)

    async def t(client: TestClient) -> None:
        assert (await client.get("/v2/app/manifests/v1")).status == 200
        resp = await client.post("/v2/app/blobs/uploads/")
        assert resp.status == 405 and await errors(resp) == ["UNSUPPORTED"]
        assert (await client.delete("/v2/app/manifests/v1")).status == 405
        assert (await client.get("/v2/app/manifests/v1")).status == 200

    run(Settings(tmp_path, read_only=True), t)


def test_gc_command_line(tmp_path: Path, capsys):
    async def fill(client: TestClient) -> None:
        await push_blob(client, "app", b"orphan")
        await push_image(client, "app", "v1")

    run(Settings(tmp_path), fill)
    assert main(["gc", "--root", str(tmp_path), "--dry-run"]) == 0
    assert f"would delete {digest(b'orphan')}" in capsys.readouterr().out
    assert (tmp_path / "blobs" / "sha256" / digest(b"orphan")[7:]).exists()
    assert main(["gc", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"deleted {digest(b'orphan')}"]
    assert not (tmp_path / "blobs" / "sha256" / digest(b"orphan")[7:]).exists()


@pytest.mark.parametrize("argv", [["serve"], ["serve", "--root"]])
def test_serve_needs_a_root(argv):
    with pytest.raises(SystemExit):
        main(argv)


def test_concurrent_chunks_for_one_upload_do_not_interleave(tmp_path):
    chunk = b"x" * 300_000

    async def t(client: TestClient) -> None:
        location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
        statuses = sorted(r.status for r in await asyncio.gather(*(
            client.patch(location, data=chunk, headers={"Content-Range": "0-299999"})
            for _ in range(2))))
        assert statuses == [202, 416]
        resp = await client.put(f"{location}?digest={digest(chunk)}")
        assert resp.status == 201

    run(Settings(tmp_path), t)


def test_large_blob_to_a_local_client_is_sent_whole_with_its_headers(tmp_path):
    """A client on loopback gets blobs copied through the socket (not sendfile): every
    byte, in order, with the length and digest headers; ranges still work."""
    data = bytes(range(256)) * 5000 + b"tail"  # 1.28 MB: several copy chunks, odd end

    async def t(client: TestClient) -> None:
        d = await push_blob(client, "big/blob", data)
        resp = await client.get(f"/v2/big/blob/blobs/{d}")
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == len(data)
        assert resp.headers["Docker-Content-Digest"] == d
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert await resp.read() == data
        resp = await client.get(f"/v2/big/blob/blobs/{d}", headers={"Range": "bytes=600000-"})
        assert resp.status == 206 and await resp.read() == data[600000:]

    run(Settings(tmp_path), t)
