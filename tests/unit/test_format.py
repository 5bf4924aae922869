"""The Go text/template subset and docker's table/size/duration helpers."""
from __future__ import annotations

import pytest
from engine.sdk.format import (
    Template,
    TemplateError,
    go_json,
    human_duration,
    human_size,
    render,
    tabwrite,
    truncate_id,
)

INSPECT = {
    "Id": "0123456789abcdef" * 4,
    "Name": "/web",
    "State": {"Status": "running", "Running": True, "Pid": 4242, "ExitCode": 0},
    "Config": {"Image": "busybox", "Env": ["A=1", "B=2"], "Cmd": ["sh", "-c", "x"],
               "Labels": {"com.example.k": "v", "a": "b"}, "Entrypoint": None},
    "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2"},
                                     "mynet": {"IPAddress": "10.0.0.2"}}},
    "Mounts": [],
}


@pytest.mark.parametrize("tmpl, expected", [
    ("{{.Id}}", INSPECT["Id"]),
    ("{{.State.Status}}", "running"),
    ("{{.State.Pid}}", "4242"),
    ("{{.State.Running}}", "true"),
    ("{{.Config.Env}}", "[A=1 B=2]"),
    ("{{.Config.Labels}}", "map[a:b com.example.k:v]"),
    ("{{.Config.Entrypoint}}", "<no value>"),
    ("{{.Missing}}", "<no value>"),
    ("{{.Mounts}}", "[]"),
    ('{{index .Config.Labels "com.example.k"}}', "v"),
    ("{{index .Config.Cmd 2}}", "x"),
    ("{{json .Config.Cmd}}", '["sh","-c","x"]'),
    ("{{json .State}}", '{"Status":"running","Running":true,"Pid":4242,"ExitCode":0}'),
    ("{{range .Config.Env}}[{{.}}]{{end}}", "[A=1][B=2]"),
    ("{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
     "bridge=172.17.0.2 mynet=10.0.0.2 "),
    ("{{range .Mounts}}x{{else}}none{{end}}", "none"),
    ('{{if eq .State.Status "running"}}up{{else}}down{{end}}', "up"),
    ('{{if ne .State.Status "running"}}down{{else if .State.Running}}yes{{end}}', "yes"),
    ("{{if and .State.Running (not .State.ExitCode)}}ok{{end}}", "ok"),
    ("{{if or .Missing .Name}}{{.Name}}{{end}}", "/web"),
    ("{{with .State}}{{.Pid}}{{end}}", "4242"),
    ("{{upper .Config.Image}} {{lower \"ABC\"}}", "BUSYBOX abc"),
    ('{{join .Config.Env ","}}', "A=1,B=2"),
    ('{{split "a:b" ":"}}', "[a b]"),
    ("{{len .Config.Env}}", "2"),
    ("{{println .Name}}", "/web\n"),
    ('{{printf "%s has pid %d" .Name .State.Pid}}', "/web has pid 4242"),
    ("{{.Config.Image | upper}}", "BUSYBOX"),
    ("{{(index .Config.Env 1) | lower}}", "b=2"),
    ("{{$n := .Name}}name={{$n}}", "name=/web"),
    ("a  {{- .Name -}}  b", "a/webb"),
    ("{{/* a comment */}}x", "x"),
    ('{{title "hello world"}}', "Hello World"),
    ('{{truncate .Id 4}}', "0123"),
])
def test_template(tmpl, expected):
    assert Template(tmpl).execute(INSPECT) == expected


@pytest.mark.parametrize("bad", ["{{.Name", "{{if .Name}}x", "{{nosuchfunc .Name}}",
                                 "{{end}}", '{{"unterminated}}', "{{.Name | }}"])
def test_template_errors(bad):
    with pytest.raises(TemplateError):
        Template(bad).execute(INSPECT)


class Row:
    def __init__(self, ident, names, labels):
        self.ID, self.Names, self._labels = ident, names, labels

    def Label(self, key):
        return self._labels.get(key, "")


def test_object_fields_and_methods():
    row = Row("abc", "web", {"tier": "front"})
    assert Template('{{.ID}} {{.Names}} {{.Label "tier"}}').execute(row) == "abc web front"
    with pytest.raises(TemplateError, match="can't evaluate field Nope"):
        Template("{{.Nope}}").execute(row)


def test_json_escapes_like_go():
    assert go_json({"a": "<b>&"}) == '{"a":"\\u003cb\\u003e\\u0026"}'


def test_render_table_with_headers_and_alignment():
    rows = [{"ID": "abc", "Name": "short"}, {"ID": "abcdef123456", "Name": "n"}]
    out = render("table {{.ID}}\\t{{.Name}}", rows, {"ID": "CONTAINER ID", "Name": "NAMES"})
    assert out.splitlines() == ["CONTAINER ID   NAMES",
                                "abc            short",
                                "abcdef123456   n"]


def test_render_non_table_has_no_header():
    assert render("{{.ID}}", [{"ID": "a"}, {"ID": "b"}], {"ID": "X"}) == "a\nb\n"


def test_tabwrite_min_width():
    assert tabwrite("a\tb\tc\nd\te\tf") == "a         b         c\nd         e         f"


def test_truncate_id():
    assert truncate_id("sha256:" + "f" * 64) == "f" * 12
    assert truncate_id("abc") == "abc"


@pytest.mark.parametrize("size, text", [
    (0, "0B"), (999, "999B"), (1000, "1kB"), (1500, "1.5kB"), (4261550, "4.26MB"),
    (1_234_567_890, "1.23GB"), (67_108_864, "67.1MB"),
])
def test_human_size(size, text):
    assert human_size(size) == text


def test_human_size_binary():
    assert human_size(2 * 1024 ** 3, 4, binary=True) == "2GiB"


@pytest.mark.parametrize("seconds, text", [
    (0.3, "Less than a second"), (1, "1 second"), (3, "3 seconds"), (59, "59 seconds"),
    (60, "About a minute"), (119, "About a minute"), (120, "2 minutes"),
    (45 * 60, "45 minutes"), (3600, "About an hour"), (5 * 3600, "5 hours"),
    (47 * 3600, "47 hours"), (3 * 86400, "3 days"), (20 * 86400, "2 weeks"),
    (90 * 86400, "3 months"), (800 * 86400, "2 years"),
])
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


@pytest.mark.parametrize("state, started, finished, text", [
    ({"Running": True}, 997, 0, "Up 3 seconds"),
    ({"Running": True, "Paused": True}, 700, 0, "Up 5 minutes (Paused)"),
    ({"Running": True, "Restarting": True, "ExitCode": 1}, 900, 996,
     "Restarting (1) 4 seconds ago"),
    ({"Running": True, "Health": {"Status": "healthy"}}, 999.5, 0,
     "Up Less than a second (healthy)"),
    ({"Running": True, "Health": {"Status": "starting"}}, 990, 0,
     "Up 10 seconds (health: starting)"),
    ({"Running": False, "ExitCode": 0}, 900, 995, "Exited (0) 5 seconds ago"),
    ({"Running": False, "ExitCode": 137}, 0, 0, "Created"),
    ({"Running": False, "Dead": True}, 900, 950, "Dead"),
    ({"Running": False, "Status": "removing"}, 900, 950, "Removal In Progress"),
])
def test_container_status(state, started, finished, text):
    from engine.sdk.format import container_status

    assert container_status(state, now=1000, started=started, finished=finished) == text
