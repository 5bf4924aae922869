"""Commands that move tar streams: ``cp``, ``export``, ``save``, ``load``, ``import``; and
the display of the daemon's JSON progress messages for ``pull`` and ``push``
(:class:`ProgressDisplay`)."""
from __future__ import annotations

import base64
import json
import os

from . import Cli, StatusError
from .common import is_terminal, stdin_binary
from .flags import BOOL, LIST, STR, Flag, Spec, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at start-up; annotations stay strings
    from collections.abc import Iterable, Iterator
    from typing import IO, Any


def _output(cli: Cli, path: str | None, what: str) -> tuple[IO[bytes], bool]:
    """The binary destination for a tar: ``-o`` file, else stdout unless a terminal."""
    if path:
        return open(path, "wb"), True
    if is_terminal(cli.out):
        raise StatusError(1, f"cowardly refusing to save {what} to a terminal. "
                             "Use the -o flag or redirect")
    cli.out.flush()
    return getattr(cli.out, "buffer", cli.out), False


def _copy_stream(chunks: Iterator[bytes], dest: IO[bytes]) -> None:
    for chunk in chunks:
        dest.write(chunk)
    dest.flush()


# -- progress display ------------------------------------------------------------------

_ESC = "\x1b"
#: terminals at least this wide get the bar, narrower ones the numbers only (as docker)
_BAR_MIN_COLUMNS = 110


def human_size(n: float) -> str:
    """Decimal size with 4 significant digits, as docker's progress prints it:
    ``12.35MB``."""
    from ..format import human_size as sized

    return sized(n, 4)


def progress_text(detail: dict[str, Any], columns: int = _BAR_MIN_COLUMNS) -> str:
    """The progress of a ``progressDetail`` (``current``, ``total``):
    ``[=====>      ]  12.35MB/45.6MB``; the bar only on a wide enough terminal."""
    try:
        current = int(detail.get("current") or 0)
        total = int(detail.get("total") or 0)
    except (TypeError, ValueError):
        return ""
    if current <= 0 and total <= 0:
        return ""
    if total <= 0:
        return f"{human_size(current):>8}"
    filled = min(50, int(current * 100 / total) // 2)
    bar = f"[{'=' * filled}>{' ' * (50 - filled)}] " if columns >= _BAR_MIN_COLUMNS else ""
    numbers = f"{human_size(current):>8}/{human_size(total)}" if current <= total else ""
    return bar + numbers


class ProgressDisplay:
    """Shows a stream of the daemon's JSON progress messages as docker's CLI does.

    On a terminal (``tty``) every message with an ``id`` and a ``progressDetail`` owns
    one line, redrawn in place: the cursor moves up to it, clears it, writes it and
    moves back down. Any other message ends that block (later ids start new lines), as
    in docker. Elsewhere, each id's line is printed once per status change and messages
    that only carry progress (``Downloading``, ``Pushing`` with a current/total) are
    left out, so logs stay readable.

    An ``error`` message raises :class:`StatusError`; ``aux`` messages are kept in
    :attr:`aux` for the caller.
    """

    def __init__(self, out: IO[str], *, tty: bool, columns: int = 0) -> None:
        self.out = out
        self.tty = tty
        self.columns = columns or _terminal_columns(out)
        self.aux: list[Any] = []
        self._lines: dict[str, int] = {}
        self._last: dict[str, str] = {}

    def show(self, messages: Iterable[Any]) -> None:
        """Display every message of ``messages`` (flushing after each on a terminal)."""
        for msg in messages:
            if isinstance(msg, dict):
                self.feed(msg)
                if self.tty:
                    self.out.flush()
        self.out.flush()

    def feed(self, msg: dict[str, Any]) -> None:
        """Display one message."""
        if msg.get("error") or msg.get("errorDetail"):
            detail = msg.get("errorDetail") or {}
            raise StatusError(1, str(msg.get("error") or detail.get("message") or "error"))
        if "aux" in msg:
            self.aux.append(msg["aux"])
            return
        ident = str(msg.get("id") or "")
        status = str(msg.get("status") or "")
        detail = msg.get("progressDetail")
        if self.tty:
            self._feed_tty(msg, ident, status, detail)
        else:
            self._feed_plain(msg, ident, status, detail)

    def _feed_tty(self, msg: dict[str, Any], ident: str, status: str, detail: Any) -> None:
        write = self.out.write
        if not ident or not isinstance(detail, dict):
            self._lines.clear()  # this block is over: later ids start new lines
            self._write_plain(msg, ident, status)
            return
        line = self._lines.get(ident)
        if line is None:
            line = self._lines[ident] = len(self._lines)
            write("\n")
        up = len(self._lines) - line
        bar = progress_text(detail, self.columns)
        write(f"{_ESC}[{up}A{_ESC}[2K\r{ident}: {status}{' ' + bar if bar else ''}\r"
              f"{_ESC}[{up}B")

    def _feed_plain(self, msg: dict[str, Any], ident: str, status: str, detail: Any) -> None:
        if ident:
            if isinstance(detail, dict) and (detail.get("current") or detail.get("total")):
                return  # a progress update: bars are for terminals
            if self._last.get(ident) == status:
                return
            self._last[ident] = status
        self._write_plain(msg, ident, status)

    def _write_plain(self, msg: dict[str, Any], ident: str, status: str) -> None:
        if msg.get("stream"):
            self.out.write(str(msg["stream"]))
        elif status:
            self.out.write(f"{ident}: {status}\n" if ident else status + "\n")


def _terminal_columns(out: IO[str]) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return _BAR_MIN_COLUMNS


def show_progress(cli: Cli, messages: Iterable[Any], out: IO[str] | None = None,
                  quiet: bool = False) -> ProgressDisplay:
    """Display ``messages`` on ``out`` (the CLI's stdout by default), bars when it is a
    terminal; with ``quiet`` only errors are reported. Returns the display (its
    ``aux`` messages)."""
    stream = out or cli.out
    display = ProgressDisplay(stream, tty=not quiet and is_terminal(stream))
    if quiet:
        for msg in messages:
            if isinstance(msg, dict) and (msg.get("error") or msg.get("errorDetail")):
                display.feed(msg)
        return display
    display.show(messages)
    return display


# -- export / save ---------------------------------------------------------------------

EXPORT = Spec("export", "export [OPTIONS] CONTAINER",
              "Export a container's filesystem as a tar archive",
              [Flag("-o, --output", STR, "Write to a file, instead of STDOUT")],
              min_args=1, max_args=1)


def cmd_export(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(EXPORT, argv)
    dest, close = _output(cli, opts.output, "exported content")
    try:
        _copy_stream(cli.api.stream("GET", f"/containers/{args[0]}/export"), dest)
    finally:
        if close:
            dest.close()
    return 0


SAVE = Spec("save", "save [OPTIONS] IMAGE [IMAGE...]",
            "Save one or more images to a tar archive (streamed to STDOUT by default)",
            [Flag("-o, --output", STR, "Write to a file, instead of STDOUT"),
             Flag("--platform", STR, "Save only the given platform variant", hidden=True)],
            min_args=1)


def cmd_save(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(SAVE, argv)
    dest, close = _output(cli, opts.output, "image data")
    try:
        _copy_stream(cli.api.stream("GET", "/images/get", [("names", n) for n in args]), dest)
    finally:
        if close:
            dest.close()
    return 0


# -- load / import ---------------------------------------------------------------------

LOAD = Spec("load", "load [OPTIONS]", "Load an image from a tar archive or STDIN", [
    Flag("-i, --input", STR, "Read from tar archive file, instead of STDIN"),
    Flag("-q, --quiet", BOOL, "Suppress the load output"),
], max_args=0)


def _print_messages(cli: Cli, messages: Iterator[Any]) -> None:
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        if msg.get("error") or msg.get("errorDetail"):
            detail = msg.get("errorDetail") or {}
            raise StatusError(1, str(msg.get("error") or detail.get("message")))
        if msg.get("stream"):
            cli.out.write(msg["stream"])
        elif msg.get("status") and not msg.get("progressDetail"):
            prefix = f"{msg['id']}: " if msg.get("id") else ""
            cli.print(prefix + msg["status"])
    cli.out.flush()


def cmd_load(cli: Cli, argv: list[str]) -> int:
    opts, _ = cli.parse(LOAD, argv)
    if opts.input:
        src: IO[bytes] = open(opts.input, "rb")
    else:
        if is_terminal(cli.stdin):
            raise StatusError(1, "requested load from stdin, but stdin is empty")
        src = stdin_binary(cli)
    try:
        msgs = cli.api.json_lines("POST", "/images/load", {"quiet": opts.quiet},
                                  body=src, headers={"Content-Type": "application/x-tar"})
        _print_messages(cli, msgs)
    finally:
        if opts.input:
            src.close()
    return 0


IMPORT = Spec("import", "import [OPTIONS] file|URL|- [REPOSITORY[:TAG]]",
              "Import the contents from a tarball to create a filesystem image", [
                  Flag("-c, --change", LIST, "Apply Dockerfile instruction to the created "
                       "image"),
                  Flag("-m, --message", STR, "Set commit message for imported image"),
                  Flag("--platform", STR, "Set platform if server is multi-platform capable"),
              ], min_args=1, max_args=2, aliases=("image import",))


def cmd_import(cli: Cli, argv: list[str]) -> int:
    from .common import split_ref

    opts, args = cli.parse(IMPORT, argv)
    source = args[0]
    params: list[tuple[str, Any]] = []
    body: Any = None
    close = None
    if source == "-":
        params.append(("fromSrc", "-"))
        body = stdin_binary(cli)
    elif "://" in source:
        params.append(("fromSrc", source))
    else:
        try:
            body = close = open(source, "rb")
        except OSError as e:
            raise StatusError(1, f"open {source}: {e.strerror}") from None
        params.append(("fromSrc", "-"))
    if len(args) == 2:
        repo, tag = split_ref(args[1])
        params += [("repo", repo), ("tag", tag)]
    params += [("message", opts.message or None), ("platform", opts.platform or None)]
    params += [("changes", c) for c in opts.change]
    try:
        msgs = cli.api.json_lines("POST", "/images/create", params, body=body,
                                  headers={"Content-Type": "application/x-tar"} if body else None)
        _print_messages(cli, msgs)
    finally:
        if close is not None:
            close.close()
    return 0


# -- cp --------------------------------------------------------------------------------

CP = Spec("cp", "cp [OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-\n\tengine cp [OPTIONS] "
          "SRC_PATH|- CONTAINER:DEST_PATH",
          "Copy files/folders between a container and the local filesystem\n\n"
          "Use '-' as the source to read a tar archive from stdin and extract it to a "
          "directory destination in a container.\nUse '-' as the destination to stream "
          "a tar archive of a container source to stdout.", [
              Flag("-a, --archive", BOOL, "Archive mode (copy all uid/gid information)"),
              Flag("-L, --follow-link", BOOL, "Always follow symbol link in SRC_PATH"),
              Flag("-q, --quiet", BOOL, "Suppress progress output during copy."),
          ], min_args=2, max_args=2, aliases=("container cp",))


def _split_container_path(arg: str) -> tuple[str | None, str]:
    """``name:/path`` -> ``("name", "/path")``; local paths (absolute, ``./x`` or
    without a colon) -> ``(None, arg)``."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    name, _, path = arg.partition(":")
    return name, path


def _path_stat(headers: dict[str, str]) -> dict[str, Any]:
    raw = headers.get("x-docker-container-path-stat")
    if not raw:
        return {}
    try:
        return json.loads(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    except ValueError:
        return {}


def _is_dir_mode(mode: int) -> bool:
    # Go's os.FileMode: ModeDir is the top bit (1 << 31)
    return bool(mode & (1 << 31)) or (mode & 0o170000) == 0o040000


def cmd_cp(cli: Cli, argv: list[str]) -> int:
    opts, (src, dst) = cli.parse(CP, argv)
    src_ctr, src_path = _split_container_path(src)
    dst_ctr, dst_path = _split_container_path(dst)
    if src_ctr and dst_ctr:
        raise UsageError("copying between containers is not supported")
    if not src_ctr and not dst_ctr:
        raise UsageError("must specify at least one container source")
    if src_ctr:
        return _copy_from(cli, src_ctr, src_path, dst_path)
    return _copy_to(cli, src_path, dst_ctr, dst_path, opts.archive)  # type: ignore[arg-type]


def _copy_from(cli: Cli, container: str, src: str, dst: str) -> int:
    """Container -> local: ``GET /containers/{id}/archive`` and extract (or print)."""
    import tarfile

    resp = cli.api.open("GET", f"/containers/{container}/archive", {"path": src})
    stat = _path_stat(resp.headers)
    if dst == "-":
        out = getattr(cli.out, "buffer", cli.out)
        cli.out.flush()
        _copy_stream(resp.iter_chunks(), out)
        return 0
    src_is_dir = _is_dir_mode(int(stat.get("mode", 0)))
    base = stat.get("name") or os.path.basename(src.rstrip("/")) or "."
    copy_contents = src.endswith("/.") and src_is_dir
    dst_exists = os.path.lexists(dst)
    dst_is_dir = os.path.isdir(dst)
    if not src_is_dir and dst.endswith("/") and not dst_exists:
        raise StatusError(1, f"destination directory {dst} does not exist")
    if src_is_dir and dst_exists and not dst_is_dir:
        raise StatusError(1, f"cannot copy directory to file {dst}")
    # where the archive's top entry (named ``base``) lands
    if dst_is_dir:
        target = dst if copy_contents else os.path.join(dst, base)
    else:
        target = dst
    reader = _ChunkReader(resp.iter_chunks())
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            name = member.name
            while name.startswith("./"):
                name = name[2:]
            name = "" if name in (".", "") else name.rstrip("/")
            head, sep, rest = name.partition("/")
            if head != base and name != base:
                rel = name
            else:
                rel = rest if sep else ""
            if os.path.isabs(rel) or ".." in rel.split("/"):
                raise StatusError(1, f"refusing to extract unsafe path {member.name!r}")
            member.name = os.path.join(target, rel) if rel else target
            if member.islnk():  # hard links name archive paths: rebase them too
                lhead, lsep, lrest = member.linkname.partition("/")
                if lhead == base and lsep:
                    member.linkname = os.path.join(target, lrest)
            tar.extract(member, path="/" if os.path.isabs(member.name) else ".",
                        set_attrs=not member.issym())
    return 0


class _ChunkReader:
    """A minimal read-only file over an iterator of byte chunks (for ``tarfile``)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            try:
                self.buf += next(self.chunks)
            except StopIteration:
                break
        if n < 0:
            data, self.buf = self.buf, b""
        else:
            data, self.buf = self.buf[:n], self.buf[n:]
        return data


def _put_params(path: str, archive: bool) -> dict[str, Any]:
    return {"path": path, "noOverwriteDirNonDir": True, "copyUIDGID": archive or None}


def _copy_to(cli: Cli, src: str, container: str, dst: str, archive: bool = False) -> int:
    """Local -> container: stat the destination, tar the source under the right name,
    ``PUT /containers/{id}/archive`` (never replacing a directory by a file or the
    reverse; ``archive`` keeps the local uid/gid)."""
    import tarfile
    import tempfile

    from engine.sdk.client import APIError

    try:
        resp = cli.api.head(f"/containers/{container}/archive", {"path": dst})
        dst_stat: dict[str, Any] | None = _path_stat(resp.headers)
    except APIError as e:
        if e.status != 404:
            raise
        dst_stat = None
    dst_is_dir = dst_stat is not None and _is_dir_mode(int(dst_stat.get("mode", 0)))
    if src == "-":
        if dst_stat is None or not dst_is_dir:
            raise StatusError(1, f"destination \"{container}:{dst}\" must be a directory")
        cli.api.put(f"/containers/{container}/archive", _put_params(dst, archive),
                    body=stdin_binary(cli),
                    headers={"Content-Type": "application/x-tar"})
        return 0
    if not os.path.lexists(src):
        raise StatusError(1, f"lstat {src}: no such file or directory")
    src_is_dir = os.path.isdir(src) and not os.path.islink(src)
    copy_contents = src.endswith("/.") and src_is_dir
    if dst_stat is None:
        if dst.endswith("/") and not src_is_dir:
            raise StatusError(1, f"destination directory {container}:{dst} does not exist")
        upload_dir = os.path.dirname(dst.rstrip("/")) or "/"
        name = os.path.basename(dst.rstrip("/"))
    elif dst_is_dir:
        upload_dir = dst
        name = "" if copy_contents else os.path.basename(os.path.normpath(src))
    else:
        if src_is_dir:
            raise StatusError(1, f"cannot copy directory to file {container}:{dst}")
        upload_dir = os.path.dirname(dst.rstrip("/")) or "/"
        name = os.path.basename(dst)
    with tempfile.TemporaryFile() as tmp:
        with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            if copy_contents or not name:
                for entry in sorted(os.listdir(src)):
                    tar.add(os.path.join(src, entry), arcname=entry)
            else:
                tar.add(src.rstrip("/") or "/", arcname=name)
        tmp.seek(0)
        cli.api.put(f"/containers/{container}/archive", _put_params(upload_dir, archive),
                    body=tmp,
                    headers={"Content-Type": "application/x-tar"})
    return 0
