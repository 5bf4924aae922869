"""The CLI's pull/push progress display: a recorded stream of the daemon's JSON
messages rendered for a terminal (one line per layer, redrawn in place with ANSI cursor
movement) and for a pipe (one line per status change, no bars)."""
from __future__ import annotations

import io
import re

import pytest
from engine.sdk.cli import StatusError
from engine.sdk.cli.transfer import ProgressDisplay, human_size, progress_text

LAYER_A, LAYER_B = "0f1e2d3c4b5a", "a1b2c3d4e5f6"

# what the daemon sends for a two-layer pull (ids and sizes as it writes them)
PULL = [
    {"status": "Pulling from bench/img", "id": "v1"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": LAYER_A},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": LAYER_B},
    {"status": "Downloading", "progressDetail": {"current": 1_000_000, "total": 4_000_000},
     "progress": "[===>  ]", "id": LAYER_A},
    {"status": "Downloading", "progressDetail": {"current": 500_000, "total": 2_000_000},
     "id": LAYER_B},
    {"status": "Downloading", "progressDetail": {"current": 4_000_000, "total": 4_000_000},
     "id": LAYER_A},
    {"status": "Verifying Checksum", "progressDetail": {}, "id": LAYER_A},
    {"status": "Download complete", "progressDetail": {}, "id": LAYER_A},
    {"status": "Extracting", "progressDetail": {}, "id": LAYER_A},
    {"status": "Pull complete", "progressDetail": {}, "id": LAYER_A},
    {"status": "Download complete", "progressDetail": {}, "id": LAYER_B},
    {"status": "Pull complete", "progressDetail": {}, "id": LAYER_B},
    {"status": "Digest: sha256:" + "ab" * 32},
    {"status": "Status: Downloaded newer image for 127.0.0.1:5000/bench/img:v1"},
]

PUSH = [
    {"status": "The push refers to repository [127.0.0.1:5000/bench/img]"},
    {"status": "Preparing", "progressDetail": {}, "id": LAYER_B},
    {"status": "Preparing", "progressDetail": {}, "id": LAYER_A},
    {"status": "Pushing", "progressDetail": {"current": 0, "total": 3_000_000}, "id": LAYER_A},
    {"status": "Layer already exists", "progressDetail": {}, "id": LAYER_B},
    {"status": "Pushing", "progressDetail": {"current": 3_000_000, "total": 3_000_000},
     "id": LAYER_A},
    {"status": "Pushed", "progressDetail": {}, "id": LAYER_A},
    {"status": "v1: digest: sha256:" + "cd" * 32 + " size: 740"},
    {"progressDetail": {}, "aux": {"Tag": "v1", "Digest": "sha256:" + "cd" * 32, "Size": 740}},
]


def render(messages: list[dict], *, tty: bool, columns: int = 120) -> tuple[str, ProgressDisplay]:
    out = io.StringIO()
    display = ProgressDisplay(out, tty=tty, columns=columns)
    display.show(messages)
    return out.getvalue(), display


class Screen:
    """Just enough of a terminal to replay the display's output: text, ``\\n``, ``\\r``,
    cursor up/down (``ESC[nA``/``ESC[nB``) and erase line (``ESC[2K``)."""

    TOKEN = re.compile(r"\x1b\[(\d*)([ABK])|(\r)|(\n)|([^\x1b\r\n]+)")

    def __init__(self) -> None:
        self.rows: list[str] = [""]
        self.row = 0
        self.col = 0

    def feed(self, text: str) -> list[str]:
        pos = 0
        while pos < len(text):
            m = self.TOKEN.match(text, pos)
            assert m is not None, f"unexpected control sequence at {text[pos:pos + 10]!r}"
            pos = m.end()
            if m.group(2) == "A":
                self.row = max(0, self.row - int(m.group(1) or 1))
            elif m.group(2) == "B":
                self.row += int(m.group(1) or 1)
            elif m.group(2) == "K":
                self.rows[self.row] = ""
            elif m.group(3):
                self.col = 0
            elif m.group(4):
                self.row += 1
                self.col = 0
            else:
                chars = m.group(5)
                line = self.rows[self.row].ljust(self.col)
                self.rows[self.row] = line[:self.col] + chars + line[self.col + len(chars):]
                self.col += len(chars)
            while len(self.rows) <= self.row:
                self.rows.append("")
        return [r.rstrip() for r in self.rows]


def test_human_size_and_progress_text_match_docker():
    assert human_size(999) == "999B"
    assert human_size(12_345_678) == "12.35MB"
    assert human_size(45_600_000) == "45.6MB"
    text = progress_text({"current": 12_345_678, "total": 45_600_000})
    assert text == "[" + "=" * 13 + ">" + " " * 37 + "]  12.35MB/45.6MB"
    assert progress_text({"current": 5, "total": 10}, columns=80) == "      5B/10B"
    assert progress_text({"current": 2048}) == " 2.048kB"
    assert progress_text({}) == ""
    assert progress_text({"current": 11, "total": 10}).endswith("] ")  # numbers dropped


def test_plain_output_prints_each_status_change_once_without_bars():
    text, _ = render(PULL, tty=False)
    assert "\x1b" not in text and "[" not in text.replace("[127.0.0.1", "")
    assert text.splitlines() == [
        "v1: Pulling from bench/img",
        f"{LAYER_A}: Pulling fs layer",
        f"{LAYER_B}: Pulling fs layer",
        f"{LAYER_A}: Verifying Checksum",
        f"{LAYER_A}: Download complete",
        f"{LAYER_A}: Extracting",
        f"{LAYER_A}: Pull complete",
        f"{LAYER_B}: Download complete",
        f"{LAYER_B}: Pull complete",
        "Digest: sha256:" + "ab" * 32,
        "Status: Downloaded newer image for 127.0.0.1:5000/bench/img:v1",
    ]


def test_terminal_output_redraws_one_line_per_layer():
    text, _ = render(PULL, tty=True)
    assert "\x1b[2K" in text and "\x1b[1A" in text and "\x1b[2A" in text
    assert text.count("\n") == 5  # the first line, one per layer, digest and status
    # mid-download the two layers show their bars on their own lines
    middle, _ = render(PULL[:5], tty=True)
    rows = Screen().feed(middle)
    assert rows[0] == "v1: Pulling from bench/img"
    assert rows[1] == f"{LAYER_A}: Downloading [" + "=" * 12 + ">" + " " * 38 + "]      1MB/4MB"
    assert rows[2] == f"{LAYER_B}: Downloading [" + "=" * 12 + ">" + " " * 38 + "]    500kB/2MB"
    rows = Screen().feed(text)
    assert rows == [
        "v1: Pulling from bench/img",
        f"{LAYER_A}: Pull complete",
        f"{LAYER_B}: Pull complete",
        "Digest: sha256:" + "ab" * 32,
        "Status: Downloaded newer image for 127.0.0.1:5000/bench/img:v1",
        "",
    ]


def test_push_on_a_terminal_and_in_a_pipe():
    text, display = render(PUSH, tty=True)
    rows = Screen().feed(text)
    assert rows[:3] == ["The push refers to repository [127.0.0.1:5000/bench/img]",
                        f"{LAYER_B}: Layer already exists", f"{LAYER_A}: Pushed"]
    assert rows[3] == "v1: digest: sha256:" + "cd" * 32 + " size: 740"
    assert display.aux == [{"Tag": "v1", "Digest": "sha256:" + "cd" * 32, "Size": 740}]
    plain, _ = render(PUSH, tty=False)
    assert plain.splitlines() == [
        "The push refers to repository [127.0.0.1:5000/bench/img]",
        f"{LAYER_B}: Preparing", f"{LAYER_A}: Preparing",
        f"{LAYER_B}: Layer already exists", f"{LAYER_A}: Pushed",
        "v1: digest: sha256:" + "cd" * 32 + " size: 740",
    ]


def test_a_second_block_starts_new_lines():
    """A message without progress ends a block: the next layers do not redraw the
    lines of the previous one (``push -a`` of several tags)."""
    text, _ = render(PUSH[:-1] + PUSH[1:3], tty=True)
    rows = Screen().feed(text)
    assert rows[-3:] == [f"{LAYER_B}: Preparing", f"{LAYER_A}: Preparing", ""]
    assert rows[1:3] == [f"{LAYER_B}: Layer already exists", f"{LAYER_A}: Pushed"]


def test_narrow_terminal_shows_numbers_without_bar():
    text, _ = render(PULL[:4], tty=True, columns=80)
    assert Screen().feed(text)[1] == f"{LAYER_A}: Downloading      1MB/4MB"


@pytest.mark.parametrize("tty", [True, False])
def test_error_message_stops_the_display(tty):
    messages = PULL[:3] + [{"errorDetail": {"message": "blob unknown"}, "error": "blob unknown"},
                           PULL[3]]
    out = io.StringIO()
    with pytest.raises(StatusError) as exc:
        ProgressDisplay(out, tty=tty).show(messages)
    assert exc.value.message == "blob unknown"
    assert "Downloading" not in out.getvalue()
