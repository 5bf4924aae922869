"""Image commands: ``images``, ``rmi``, ``tag``, ``commit``, ``history``, ``pull``,
``push``, ``login``/``logout``, ``image inspect`` and ``image prune``."""
from __future__ import annotations

import time

from . import Cli, StatusError
from .common import go_time, inspect_objects, parse_filters, pull, rfc3339, split_ref
from .flags import BOOL, LIST, STR, Flag, Spec

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at start-up; annotations stay strings
    from typing import Any


def familiar(name: str) -> str:
    """``docker.io/library/busybox`` -> ``busybox``, as docker shows names."""
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/",
                   "index.docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


class ImageRow:
    """The ``images --format`` context: one repository/tag (or digest) of an image."""

    HEADERS = {"ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG",
               "Digest": "DIGEST", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
               "Size": "SIZE", "Containers": "CONTAINERS", "VirtualSize": "VIRTUAL SIZE",
               "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE"}

    def __init__(self, image: dict[str, Any], repo: str, tag: str, digest: str,
                 trunc: bool = True, now: float | None = None) -> None:
        self.i = image
        self.Repository = repo
        self.Tag = tag
        self.Digest = digest
        self.trunc = trunc
        self.now = time.time() if now is None else now

    def __json__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in
                ("Containers", "CreatedAt", "CreatedSince", "Digest", "ID", "Repository",
                 "SharedSize", "Size", "Tag", "UniqueSize", "VirtualSize")}

    @property
    def ID(self) -> str:
        from engine.sdk.format import truncate_id

        ident = self.i.get("Id", "")
        return truncate_id(ident) if self.trunc else ident

    @property
    def CreatedSince(self) -> str:
        from engine.sdk.format import human_duration

        created = self.i.get("Created", 0)
        if not created:
            return "N/A"
        return human_duration(self.now - created) + " ago"

    @property
    def CreatedAt(self) -> str:
        return go_time(self.i.get("Created", 0))

    def _size(self, key: str) -> str:
        from engine.sdk.format import human_size

        value = self.i.get(key)
        if value is None or value < 0:
            return "N/A"
        return human_size(value)

    @property
    def Size(self) -> str:
        return self._size("Size")

    @property
    def VirtualSize(self) -> str:
        return self._size("VirtualSize") if "VirtualSize" in self.i else self._size("Size")

    @property
    def SharedSize(self) -> str:
        return self._size("SharedSize")

    @property
    def UniqueSize(self) -> str:
        from engine.sdk.format import human_size

        shared = self.i.get("SharedSize", -1)
        if shared is None or shared < 0:
            return "N/A"
        return human_size(self.i.get("Size", 0) - shared)

    @property
    def Containers(self) -> str:
        n = self.i.get("Containers", -1)
        return "N/A" if n is None or n < 0 else str(n)


def image_rows(images: list[dict[str, Any]], digests: bool, trunc: bool) -> list[ImageRow]:
    """One row per repository:tag and digest, then one per digest-only repository (a
    row per digest with ``--digests``), as docker lists them."""
    now = time.time()
    rows: list[ImageRow] = []
    for image in images:
        tags = [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
        dgsts = [d for d in image.get("RepoDigests") or [] if d != "<none>@<none>"]
        if not tags and not dgsts:
            rows.append(ImageRow(image, "<none>", "<none>", "<none>", trunc, now))
            continue
        repo_tags: dict[str, list[str]] = {}
        repo_digests: dict[str, list[str]] = {}
        for ref in tags:
            name, tag = split_ref(ref)
            repo_tags.setdefault(familiar(name), []).append(tag)
        for ref in dgsts:
            name, _, digest = ref.partition("@")
            repo_digests.setdefault(familiar(name), []).append(digest)
        for repo, repo_tag_list in repo_tags.items():
            ds = repo_digests.pop(repo, [])
            for tag in repo_tag_list:
                if not ds:
                    rows.append(ImageRow(image, repo, tag, "<none>", trunc, now))
                for d in ds:
                    rows.append(ImageRow(image, repo, tag, d, trunc, now))
        for repo, ds in repo_digests.items():
            if digests:
                rows.extend(ImageRow(image, repo, "<none>", d, trunc, now) for d in ds)
            else:
                rows.append(ImageRow(image, repo, "<none>", "", trunc, now))
    return rows


IMAGES = Spec("images", "images [OPTIONS] [REPOSITORY[:TAG]]", "List images", [
    Flag("-a, --all", BOOL, "Show all images (default hides intermediate images)"),
    Flag("--digests", BOOL, "Show digests"),
    Flag("-f, --filter", LIST, "Filter output based on conditions provided"),
    Flag("--format", STR, "Format output using a custom template"),
    Flag("--no-trunc", BOOL, "Don't truncate output"),
    Flag("-q, --quiet", BOOL, "Only show image IDs"),
    Flag("--tree", BOOL, "List multi-platform images as a tree", hidden=True),
], max_args=1, aliases=("image ls", "image list"))

IMAGES_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
IMAGES_DIGESTS_TABLE = ("table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t"
                        "{{.CreatedSince}}\t{{.Size}}")


def cmd_images(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.format import TemplateError, render

    opts, args = cli.parse(IMAGES, argv)
    filters = parse_filters(opts.filter) or {}
    if args:
        filters.setdefault("reference", {})[args[0]] = True
    params = {"all": opts.all or None, "filters": filters or None,
              "digests": opts.digests or None}
    images = cli.api.get("/images/json", params).json() or []
    fmt = opts.format or ""
    if fmt == "json":
        fmt = "{{json .}}"
    if opts.quiet and not opts.format:
        fmt = "{{.ID}}"
    elif not fmt or fmt == "table":
        fmt = IMAGES_DIGESTS_TABLE if opts.digests else IMAGES_TABLE
    rows = image_rows(images, opts.digests, trunc=not opts.no_trunc)
    try:
        cli.out.write(render(fmt, rows, ImageRow.HEADERS))
    except TemplateError as e:
        raise StatusError(1, f"template parsing error: {e}") from None
    return 0


RMI = Spec("rmi", "rmi [OPTIONS] IMAGE [IMAGE...]", "Remove one or more images", [
    Flag("-f, --force", BOOL, "Force removal of the image"),
    Flag("--no-prune", BOOL, "Do not delete untagged parents"),
], min_args=1, aliases=("image rm", "image remove"))


def cmd_rmi(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.client import APIError

    opts, args = cli.parse(RMI, argv)
    params = {"force": opts.force or None, "noprune": opts.no_prune or None}
    failed = False
    for name in args:
        try:
            report = cli.api.delete(f"/images/{name}", params).json() or []
        except APIError as e:
            cli.warn(str(e))
            failed = True
            continue
        for item in report:
            if item.get("Untagged"):
                cli.print(f"Untagged: {item['Untagged']}")
            if item.get("Deleted"):
                cli.print(f"Deleted: {item['Deleted']}")
    return 1 if failed else 0


TAG = Spec("tag", "tag SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]",
           "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE", min_args=2, max_args=2)


def cmd_tag(cli: Cli, argv: list[str]) -> int:
    _, (source, target) = cli.parse(TAG, argv)
    repo, tag = split_ref(target)
    cli.api.post(f"/images/{source}/tag", {"repo": repo, "tag": tag})
    return 0


COMMIT = Spec("commit", "commit [OPTIONS] CONTAINER [REPOSITORY[:TAG]]",
              "Create a new image from a container's changes", [
                  Flag("-a, --author", STR, 'Author (e.g., "John Hannibal Smith '
                       '<hannibal@a-team.com>")'),
                  Flag("-c, --change", LIST, "Apply Dockerfile instruction to the created image"),
                  Flag("-m, --message", STR, "Commit message"),
                  Flag("-p, --pause", BOOL, "Pause container during commit", default=True),
              ], min_args=1, max_args=2)


def cmd_commit(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(COMMIT, argv)
    params: list[tuple[str, Any]] = [("container", args[0])]
    if len(args) == 2:
        repo, tag = split_ref(args[1])
        params += [("repo", repo), ("tag", tag)]
    params += [("comment", opts.message or None), ("author", opts.author or None),
               ("pause", opts.pause)]
    params += [("changes", c) for c in opts.change]
    resp = cli.api.post("/commit", params, body={})
    cli.print((resp.json() or {}).get("Id", ""))
    return 0


HISTORY = Spec("history", "history [OPTIONS] IMAGE", "Show the history of an image", [
    Flag("--format", STR, "Format output using a custom template"),
    Flag("-H, --human", BOOL, "Print sizes and dates in human readable format",
         default=True),
    Flag("--no-trunc", BOOL, "Don't truncate output"),
    Flag("-q, --quiet", BOOL, "Only show image IDs"),
], min_args=1, max_args=1, aliases=("image history",))


class HistoryRow:
    HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
               "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"}

    def __init__(self, h: dict[str, Any], trunc: bool, human: bool, now: float) -> None:
        self.h, self.trunc, self.human, self.now = h, trunc, human, now

    @property
    def ID(self) -> str:
        from engine.sdk.format import truncate_id

        ident = self.h.get("Id") or "<missing>"
        if ident == "<missing>":
            return ident
        return truncate_id(ident) if self.trunc else ident

    @property
    def CreatedSince(self) -> str:
        from engine.sdk.format import human_duration

        if not self.human:
            return self.CreatedAt
        return human_duration(self.now - self.h.get("Created", 0)) + " ago"

    @property
    def CreatedAt(self) -> str:
        return rfc3339(self.h.get("Created", 0))

    @property
    def CreatedBy(self) -> str:
        from .containers import ellipsis

        text = (self.h.get("CreatedBy") or "").replace("\t", " ")
        return ellipsis(text, 45) if self.trunc else text

    @property
    def Size(self) -> str:
        from engine.sdk.format import human_size

        size = self.h.get("Size", 0)
        return human_size(size) if self.human else str(size)

    @property
    def Comment(self) -> str:
        return self.h.get("Comment", "")


def cmd_history(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.format import render

    opts, args = cli.parse(HISTORY, argv)
    history = cli.api.get(f"/images/{args[0]}/history").json() or []
    now = time.time()
    rows = [HistoryRow(h, not opts.no_trunc, opts.human, now) for h in history]
    if opts.quiet:
        fmt = "{{.ID}}"
    else:
        fmt = opts.format or ("table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t"
                              "{{.Size}}\t{{.Comment}}")
    cli.out.write(render(fmt, rows, HistoryRow.HEADERS))
    return 0


PULL = Spec("pull", "pull [OPTIONS] NAME[:TAG|@DIGEST]", "Download an image from a registry", [
    Flag("-a, --all-tags", BOOL, "Download all tagged images in the repository"),
    Flag("--platform", STR, "Set platform if server is multi-platform capable"),
    Flag("-q, --quiet", BOOL, "Suppress verbose output"),
], min_args=1, max_args=1, aliases=("image pull",))


def cmd_pull(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(PULL, argv)
    if "@" not in args[0] and split_ref(args[0])[1] == "latest" and \
            not args[0].endswith(":latest") and not opts.quiet:
        cli.print("Using default tag: latest")
    pull(cli, args[0], quiet=opts.quiet, platform=opts.platform, announce=True)
    return 0


PUSH = Spec("push", "push [OPTIONS] NAME[:TAG]", "Upload an image to a registry", [
    Flag("-a, --all-tags", BOOL, "Push all tags of an image to the repository"),
    Flag("-q, --quiet", BOOL, "Suppress verbose output"),
], min_args=1, max_args=1, aliases=("image push",))


def cmd_push(cli: Cli, argv: list[str]) -> int:
    import base64

    opts, args = cli.parse(PUSH, argv)
    name, tag = split_ref(args[0])
    auth = base64.urlsafe_b64encode(b"{}").decode()
    params = {"tag": None if opts.all_tags else tag}
    from .transfer import show_progress

    show_progress(cli, cli.api.json_lines("POST", f"/images/{name}/push", params,
                                          headers={"X-Registry-Auth": auth}),
                  quiet=opts.quiet)
    if opts.quiet:
        cli.print(args[0])
    return 0


LOGIN = Spec("login", "login [OPTIONS] [SERVER]", "Authenticate to a registry", [
    Flag("-p, --password", STR, "Password"),
    Flag("--password-stdin", BOOL, "Take the password from stdin"),
    Flag("-u, --username", STR, "Username"),
], max_args=1)


def cmd_login(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(LOGIN, argv)
    password = opts.password or ""
    if opts.password_stdin:
        if opts.password:
            raise StatusError(1, "--password and --password-stdin are mutually exclusive")
        password = cli.stdin.read().rstrip("\r\n")
    if not opts.username:
        raise StatusError(1, "Error: Cannot perform an interactive login from a "
                             "non TTY device (give --username)")
    body = {"username": opts.username, "password": password,
            "serveraddress": args[0] if args else "https://index.docker.io/v1/"}
    data = cli.api.post("/auth", body=body).json() or {}
    cli.print(data.get("Status") or "Login Succeeded")
    return 0


LOGOUT = Spec("logout", "logout [SERVER]", "Log out from a registry", max_args=1)


def cmd_logout(cli: Cli, argv: list[str]) -> int:
    _, args = cli.parse(LOGOUT, argv)
    cli.print(f"Removing login credentials for {args[0] if args else 'https://index.docker.io/v1/'}")
    return 0


IMAGE_INSPECT = Spec("image inspect", "image inspect [OPTIONS] IMAGE [IMAGE...]",
                     "Display detailed information on one or more images",
                     [Flag("-f, --format", STR, "Format output using a custom template")],
                     min_args=1)


def cmd_image_inspect(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(IMAGE_INSPECT, argv)
    return inspect_objects(cli, args, lambda n: cli.api.get(f"/images/{n}/json").json(),
                           opts.format, lambda n: f"Error response from daemon: No such image: {n}")


IMAGE_PRUNE = Spec("image prune", "image prune [OPTIONS]", "Remove unused images", [
    Flag("-a, --all", BOOL, "Remove all unused images, not just dangling ones"),
    Flag("--filter", LIST, 'Provide filter values (e.g. "until=<timestamp>")'),
    Flag("-f, --force", BOOL, "Do not prompt for confirmation"),
], max_args=0)


def print_image_prune(cli: Cli, report: dict[str, Any]) -> int:
    deleted = report.get("ImagesDeleted") or []
    if deleted:
        cli.print("Deleted Images:")
        for item in deleted:
            if item.get("Untagged"):
                cli.print(f"untagged: {item['Untagged']}")
            if item.get("Deleted"):
                cli.print(f"deleted: {item['Deleted']}")
        cli.print()
    return report.get("SpaceReclaimed") or 0


def cmd_image_prune(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.format import human_size

    from .containers import confirm

    opts, _ = cli.parse(IMAGE_PRUNE, argv)
    warning = ("WARNING! This will remove all images without at least one container "
               "associated to them." if opts.all else
               "WARNING! This will remove all dangling images.")
    if not confirm(cli, opts.force, warning):
        return 0
    filters = parse_filters(opts.filter) or {}
    filters["dangling"] = {"false" if opts.all else "true": True}
    report = cli.api.post("/images/prune", {"filters": filters}).json() or {}
    space = print_image_prune(cli, report)
    cli.print(f"Total reclaimed space: {human_size(space)}")
    return 0
