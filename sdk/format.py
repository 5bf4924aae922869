"""The subset of Go's text/template that ``--format`` needs, and Docker's table output.

Supported: text and ``{{ }}`` actions with ``{{-``/``-}}`` trimming and ``{{/* */}}``
comments; pipelines (``a | f b``) of fields (``.A.B``, ``.``, ``$``, ``$x.A``), string,
raw-string, number and boolean literals, parenthesised pipelines; variables
(``$x := ...``, ``range $i, $e := ...``); ``if``/``else if``/``else``, ``range``
(with ``else``), ``with``; the builtins ``and or not len index slice print printf
println eq ne lt le gt ge urlquery`` and Docker's ``json split join title lower upper
pad truncate``.

Values are Python data decoded from the API's JSON (dicts, lists, str, int, float,
bool, None) or objects exposing attributes (the ``ps``/``images`` row contexts); a
method may take arguments (``{{.Label "k"}}``). Values print like Go's ``fmt``:
lists as ``[a b]``, dicts as ``map[k:v]``, a missing map key as ``<no value>``.

:func:`render` applies Docker's formatter rules on top: a ``table`` prefix adds a
header row (rendered against the row type's header names) and aligns columns like
Go's ``tabwriter`` (min width 10, padding 3); ``\\t`` and ``\\n`` escapes become real
tabs and newlines; every item is followed by a newline.

This module also holds the human-readable helpers Docker uses in its tables
(:func:`human_duration`, :func:`human_size`, :func:`container_status`) so the daemon
can reuse them for the ``Status`` strings it puts in container lists.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Template", "TemplateError", "container_status", "go_json", "go_str",
           "human_duration", "human_size", "is_truthy", "render", "tabwrite", "truncate_id"]


class TemplateError(ValueError):
    """The template does not parse or cannot be applied to the value."""


_MISSING = object()


# -- printing like Go ------------------------------------------------------------------

def go_str(value: Any) -> str:
    """Format ``value`` as Go's ``fmt.Sprint`` would a decoded-JSON value."""
    if value is None or value is _MISSING:
        return "<no value>"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_go_inner(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_inner(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _go_inner(value: Any) -> str:
    return "<nil>" if value is None else go_str(value)


def _go_float(value: float) -> str:
    """Go's ``%v`` for a float64: shortest digits, exponent form only below 1e-4 or
    from 1e21 on (JSON numbers that are whole print without a fraction)."""
    if value != value or value in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(value)]
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mant, exp = text.split("e")
        if -4 <= int(exp) < 21:
            return format(value, "f").rstrip("0").rstrip(".")
        sign = "-" if exp.startswith("-") else "+"
        return f"{mant}e{sign}{int(exp.lstrip('+-')):02d}"
    return text


def go_json(value: Any) -> str:
    """JSON as Go's ``json.Marshal`` writes it: compact, with ``<``, ``>`` and ``&``
    escaped."""
    text = json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _plain(value: Any) -> Any:
    to_json = getattr(value, "__json__", None)
    return to_json() if to_json is not None else value


def is_truthy(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty strings, lists and maps are false."""
    if value is None or value is _MISSING:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


# -- lexing ----------------------------------------------------------------------------

class _Tok:
    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value: Any) -> None:
        self.kind = kind  # field var str num bool nil ident pipe lparen rparen assign comma
        self.value = value

    def __repr__(self) -> str:
        return f"{self.kind}:{self.value!r}"


_GO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'",
               "a": "\a", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def _lex_action(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c in " \t\r\n":
            i += 1
        elif c == "|":
            toks.append(_Tok("pipe", "|"))
            i += 1
        elif c == "(":
            toks.append(_Tok("lparen", "("))
            i += 1
        elif c == ")":
            toks.append(_Tok("rparen", ")"))
            i += 1
        elif c == ",":
            toks.append(_Tok("comma", ","))
            i += 1
        elif src.startswith(":=", i) or c == "=":
            toks.append(_Tok("assign", ":="))
            i += 2 if c == ":" else 1
        elif c == '"':
            j, out = i + 1, []
            while j < n and src[j] != '"':
                if src[j] == "\\" and j + 1 < n:
                    out.append(_GO_ESCAPES.get(src[j + 1], src[j + 1]))
                    j += 2
                else:
                    out.append(src[j])
                    j += 1
            if j >= n:
                raise TemplateError("unterminated quoted string")
            toks.append(_Tok("str", "".join(out)))
            i = j + 1
        elif c == "`":
            j = src.find("`", i + 1)
            if j < 0:
                raise TemplateError("unterminated raw quoted string")
            toks.append(_Tok("str", src[i + 1:j]))
            i = j + 1
        elif c == "." or c == "$":
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] in "_."):
                j += 1
            word = src[i:j]
            if c == "$":
                name, _, rest = word.partition(".")
                toks.append(_Tok("var", (name, [p for p in rest.split(".") if p] if rest else [])))
            else:
                parts = [p for p in word.split(".") if p]
                if ".." in word:
                    raise TemplateError(f"bad field {word!r}")
                toks.append(_Tok("field", parts))
            i = j
        elif c.isdigit() or (c in "+-" and i + 1 < n and src[i + 1].isdigit()):
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] in "._+-") :
                j += 1
            word = src[i:j]
            try:
                toks.append(_Tok("num", int(word, 0)))
            except ValueError:
                try:
                    toks.append(_Tok("num", float(word)))
                except ValueError:
                    raise TemplateError(f"bad number syntax: {word!r}") from None
            i = j
        elif c.isalpha() or c == "_":
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] == "_"):
                j += 1
            word = src[i:j]
            if word in ("true", "false"):
                toks.append(_Tok("bool", word == "true"))
            elif word == "nil":
                toks.append(_Tok("nil", None))
            else:
                toks.append(_Tok("ident", word))
            i = j
        else:
            raise TemplateError(f"unexpected {c!r} in action")
        # a field chain may follow a parenthesised pipeline: (index .A 0).Name
        if toks and toks[-1].kind == "rparen" and i < n and src[i] == ".":
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] in "_."):
                j += 1
            toks.append(_Tok("chain", [p for p in src[i:j].split(".") if p]))
            i = j
    return toks


# -- parse tree ------------------------------------------------------------------------
# Nodes are tuples: ("text", s) ("action", pipe) ("if", pipe, body, else)
# ("range", pipe, body, else, vars) ("with", pipe, body, else)
# A pipe is (decl_vars, [command, ...]); a command is a list of operands; an operand is
# ("field", parts) ("var", name, parts) ("lit", value) ("ident", name)
# ("sub", pipe, parts).


class _Parser:
    def __init__(self, text: str) -> None:
        self.items = self._split(text)
        self.pos = 0

    @staticmethod
    def _split(text: str) -> list[tuple[str, str]]:
        items: list[tuple[str, str]] = []
        i = 0
        while True:
            j = text.find("{{", i)
            if j < 0:
                items.append(("text", text[i:]))
                return items
            k = text.find("}}", j + 2)
            if k < 0:
                raise TemplateError("unclosed action")
            chunk = text[i:j]
            inner = text[j + 2:k]
            if inner == "-" or inner[:2] in ("- ", "-\t", "-\n", "-\r"):
                chunk = chunk.rstrip(" \t\r\n")
                inner = inner[1:]
            trim_right = inner.endswith(" -") or inner.endswith("\t-") or inner.endswith("\n-")
            if trim_right:
                inner = inner[:-1]
            items.append(("text", chunk))
            items.append(("action", inner.strip()))
            i = k + 2
            if trim_right:
                while i < len(text) and text[i] in " \t\r\n":
                    i += 1

    def parse(self) -> list[tuple]:
        body, stop = self._list()
        if stop is not None:
            raise TemplateError(f"unexpected {{{{{stop}}}}}")
        return body

    def _list(self) -> tuple[list[tuple], str | None]:
        """Parse nodes until ``end``/``else``; return them and the stopping keyword."""
        nodes: list[tuple] = []
        while self.pos < len(self.items):
            kind, value = self.items[self.pos]
            self.pos += 1
            if kind == "text":
                if value:
                    nodes.append(("text", value))
                continue
            if value.startswith("/*"):
                if not value.endswith("*/"):
                    raise TemplateError("unclosed comment")
                continue
            word, _, rest = value.partition(" ")
            if word in ("end", "else"):
                return nodes, value
            if word in ("if", "with", "range"):
                nodes.append(self._block(word, rest.strip()))
            elif word in ("define", "template", "block"):
                raise TemplateError(f"{word!r} is not supported")
            else:
                nodes.append(("action", _parse_pipe(_lex_action(value))))
        return nodes, None

    def _block(self, word: str, rest: str) -> tuple:
        if not rest:
            raise TemplateError(f"missing value for {word}")
        pipe = _parse_pipe(_lex_action(rest))
        body, stop = self._list()
        else_body: list[tuple] = []
        if stop is None:
            raise TemplateError(f"unexpected EOF: {word} without end")
        if stop.startswith("else"):
            cond = stop[4:].strip()
            if cond.startswith("if ") and word == "if":
                else_body = [self._block("if", cond[3:].strip())]
                # the nested if consumed the shared {{end}}
                return ("if", pipe, body, else_body)
            if cond:
                raise TemplateError(f"unsupported {{{{{stop}}}}}")
            else_body, stop = self._list()
            if stop != "end":
                raise TemplateError(f"expected end after else in {word}")
        if word == "range":
            return ("range", pipe, body, else_body)
        return (word, pipe, body, else_body)


def _parse_pipe(toks: list[_Tok]) -> tuple[list[str], list[list[tuple]]]:
    decl: list[str] = []
    # variable declarations: $x := ... or $i, $e := ...
    for k, tok in enumerate(toks):
        if tok.kind == "assign":
            names = [t.value[0] for t in toks[:k] if t.kind == "var"]
            if not names or any(t.kind not in ("var", "comma") for t in toks[:k]):
                raise TemplateError("bad variable declaration")
            decl = names
            toks = toks[k + 1:]
            break
    cmds, pos = _parse_cmds(toks, 0)
    if pos != len(toks):
        raise TemplateError(f"unexpected {toks[pos].value!r}")
    if not cmds:
        raise TemplateError("missing value for command")
    return decl, cmds


def _parse_cmds(toks: list[_Tok], pos: int) -> tuple[list[list[tuple]], int]:
    cmds: list[list[tuple]] = []
    cmd: list[tuple] = []
    while pos < len(toks):
        tok = toks[pos]
        if tok.kind == "rparen":
            break
        pos += 1
        if tok.kind == "pipe":
            if not cmd:
                raise TemplateError("missing command before |")
            cmds.append(cmd)
            cmd = []
        elif tok.kind == "field":
            cmd.append(("field", tok.value))
        elif tok.kind == "var":
            cmd.append(("var", tok.value[0], tok.value[1]))
        elif tok.kind in ("str", "num", "bool", "nil"):
            cmd.append(("lit", tok.value))
        elif tok.kind == "ident":
            cmd.append(("ident", tok.value))
        elif tok.kind == "lparen":
            sub, pos = _parse_cmds(toks, pos)
            if pos >= len(toks) or toks[pos].kind != "rparen":
                raise TemplateError("unclosed left paren")
            pos += 1
            chain: list[str] = []
            if pos < len(toks) and toks[pos].kind == "chain":
                chain = toks[pos].value
                pos += 1
            cmd.append(("sub", ([], sub), chain))
        else:
            raise TemplateError(f"unexpected {tok.value!r}")
    if cmd:
        cmds.append(cmd)
    elif cmds:
        raise TemplateError("missing command after |")
    return cmds, pos


# -- functions -------------------------------------------------------------------------

def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if item is None:
            raise TemplateError("index of untyped nil")
        if isinstance(item, dict):
            item = item.get(key)
        elif isinstance(item, (list, tuple, str)):
            if not isinstance(key, int) or not 0 <= key < len(item):
                raise TemplateError(f"index out of range: {key}")
            item = item[key]
        else:
            raise TemplateError(f"can't index item of type {type(item).__name__}")
    return item


def _sprint(*args: Any) -> str:
    out = []
    for k, a in enumerate(args):
        if k and not isinstance(a, str) and not isinstance(args[k - 1], str):
            out.append(" ")
        out.append(go_str(a))
    return "".join(out)


def _printf(fmt: str, *args: Any) -> str:
    out, i, argi = [], 0, 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%" or i + 1 >= len(fmt):
            out.append(c)
            i += 1
            continue
        j = i + 1
        while j < len(fmt) and fmt[j] in "-+# 0123456789.":
            j += 1
        flags, verb = fmt[i + 1:j], fmt[j] if j < len(fmt) else "v"
        i = j + 1
        if verb == "%":
            out.append("%")
            continue
        arg = args[argi] if argi < len(args) else _MISSING
        argi += 1
        if verb in "sv":
            out.append(("%" + flags + "s") % go_str(arg))
        elif verb == "q":
            out.append(json.dumps(go_str(arg), ensure_ascii=False))
        elif verb in "dxXo" and isinstance(arg, (int, float)):
            out.append(("%" + flags + verb) % int(arg))
        elif verb in "feg" and isinstance(arg, (int, float)):
            out.append(("%" + flags + verb) % arg)
        elif verb == "t":
            out.append(go_str(bool(arg)))
        else:
            out.append(f"%!{verb}({go_str(arg)})")
    return "".join(out)


def _cmp(op: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def fn(a: Any, *bs: Any) -> bool:
        if not bs:
            raise TemplateError("missing argument for comparison")
        try:
            return any(op(a, b) for b in bs) if op is _eq else op(a, bs[0])
        except TypeError:
            raise TemplateError("incompatible types for comparison") from None
    return fn


def _eq(a: Any, b: Any) -> bool:
    return a == b


def _pad(s: Any, left: int, right: int) -> str:
    s = go_str(s)
    return " " * left + s + " " * right if s else s


def _truncate(s: Any, n: int) -> str:
    s = go_str(s)
    return s[:n] if len(s) > n else s


def _slice(item: Any, *idx: int) -> Any:
    if len(idx) == 0:
        return item
    if len(idx) == 1:
        return item[idx[0]:]
    return item[idx[0]:idx[1]]


def _title(s: Any) -> str:
    s = go_str(s)
    return " ".join(w[:1].upper() + w[1:] for w in s.split(" "))


def _urlquery(*args: Any) -> str:
    from urllib.parse import quote_plus
    return quote_plus(_sprint(*args))


FUNCS: dict[str, Callable[..., Any]] = {
    "json": go_json,
    "split": lambda s, sep: go_str(s).split(sep),
    "join": lambda items, sep: sep.join(go_str(i) for i in (items or [])),
    "title": _title,
    "lower": lambda s: go_str(s).lower(),
    "upper": lambda s: go_str(s).upper(),
    "pad": _pad,
    "truncate": _truncate,
    "index": _index,
    "slice": _slice,
    "len": lambda x: len(x) if x is not None else 0,
    "print": _sprint,
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "printf": _printf,
    "urlquery": _urlquery,
    "eq": _cmp(_eq),
    "ne": _cmp(lambda a, b: a != b),
    "lt": _cmp(lambda a, b: a < b),
    "le": _cmp(lambda a, b: a <= b),
    "gt": _cmp(lambda a, b: a > b),
    "ge": _cmp(lambda a, b: a >= b),
}


# -- execution -------------------------------------------------------------------------

class Template:
    """A parsed template. ``execute(value)`` returns the rendered text."""

    def __init__(self, text: str, funcs: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self.text = text
        self.funcs = dict(FUNCS)
        if funcs:
            self.funcs.update(funcs)
        self.tree = _Parser(text).parse()

    def execute(self, dot: Any) -> str:
        out: list[str] = []
        self._walk(self.tree, dot, {"$": dot}, out)
        return "".join(out)

    def _walk(self, nodes: list[tuple], dot: Any, env: dict[str, Any], out: list[str]) -> None:
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "action":
                value = self._pipe(node[1], dot, env)
                if not node[1][0]:  # a declaration prints nothing
                    out.append(go_str(value))
            elif kind == "if":
                if is_truthy(self._pipe(node[1], dot, env)):
                    self._walk(node[2], dot, env, out)
                else:
                    self._walk(node[3], dot, env, out)
            elif kind == "with":
                value = self._pipe(node[1], dot, env)
                if is_truthy(value):
                    self._walk(node[2], value, env, out)
                else:
                    self._walk(node[3], dot, env, out)
            elif kind == "range":
                decl, cmds = node[1]
                value = self._pipe(([], cmds), dot, env)
                if isinstance(value, dict):
                    pairs = sorted(value.items())
                elif value is None or value is _MISSING:
                    pairs = []
                elif isinstance(value, (list, tuple, str)):
                    pairs = list(enumerate(value))
                elif isinstance(value, int):
                    pairs = [(i, i) for i in range(value)]
                else:
                    raise TemplateError(f"range can't iterate over {go_str(value)}")
                if not pairs:
                    self._walk(node[3], dot, env, out)
                for key, item in pairs:
                    inner = dict(env)
                    if len(decl) == 1:
                        inner[decl[0]] = item
                    elif len(decl) == 2:
                        inner[decl[0]], inner[decl[1]] = key, item
                    self._walk(node[2], item, inner, out)

    def _pipe(self, pipe: tuple[list[str], list[list[tuple]]], dot: Any,
              env: dict[str, Any]) -> Any:
        decl, cmds = pipe
        value: Any = _MISSING
        for k, cmd in enumerate(cmds):
            value = self._command(cmd, dot, env, value if k else _MISSING)
        if decl:
            env[decl[-1]] = value
        return value

    def _command(self, cmd: list[tuple], dot: Any, env: dict[str, Any], piped: Any) -> Any:
        head = cmd[0]
        if head[0] == "ident":
            fn = self.funcs.get(head[1])
            if fn is None:
                raise TemplateError(f'function "{head[1]}" not defined')
            args = [self._operand(op, dot, env) for op in cmd[1:]]
            if piped is not _MISSING:
                args.append(piped)
            try:
                return fn(*[None if a is _MISSING else a for a in args])
            except TemplateError:
                raise
            except (TypeError, ValueError, AttributeError, KeyError) as e:
                raise TemplateError(f"error calling {head[1]}: {e}") from None
        if head[0] == "field" and (len(cmd) > 1 or piped is not _MISSING):
            # a method call with arguments: {{.Label "com.example"}}
            args = [self._operand(op, dot, env) for op in cmd[1:]]
            if piped is not _MISSING:
                args.append(piped)
            return self._field(dot, head[1], args)
        if len(cmd) > 1 or piped is not _MISSING:
            raise TemplateError(f"can't give argument to non-function {head}")
        return self._operand(head, dot, env)

    def _operand(self, op: tuple, dot: Any, env: dict[str, Any]) -> Any:
        kind = op[0]
        if kind == "lit":
            return op[1]
        if kind == "field":
            return self._field(dot, op[1])
        if kind == "var":
            if op[1] not in env:
                raise TemplateError(f"undefined variable: {op[1]}")
            return self._field(env[op[1]], op[2])
        if kind == "sub":
            return self._field(self._pipe(op[1], dot, env), op[2])
        if kind == "ident":
            if op[1] in ("and", "or", "not"):
                raise TemplateError(f"{op[1]} needs arguments")
            fn = self.funcs.get(op[1])
            if fn is None:
                raise TemplateError(f'function "{op[1]}" not defined')
            return fn()
        raise TemplateError(f"bad operand {op!r}")

    @staticmethod
    def _field(value: Any, parts: list[str], args: list[Any] | None = None) -> Any:
        for k, name in enumerate(parts):
            last = k == len(parts) - 1
            if value is None or value is _MISSING:
                if isinstance(value, dict) or value is _MISSING:
                    return _MISSING
                raise TemplateError(f"nil pointer evaluating .{name}")
            if isinstance(value, dict):
                value = value.get(name, _MISSING)
                continue
            attr = getattr(value, name, _MISSING) if not name.startswith("_") else _MISSING
            if attr is _MISSING:
                raise TemplateError(
                    f"can't evaluate field {name} in type {type(value).__name__}")
            if callable(attr):
                attr = attr(*(args or [])) if last else attr()
            elif last and args:
                raise TemplateError(f"{name} is not a method but has arguments")
            value = attr
        if args and not parts:
            raise TemplateError("can't give argument to non-function .")
        return value


# special-case and/or/not: they work on truthiness and return an operand, as in Go
def _and(*args: Any) -> Any:
    if not args:
        raise TemplateError("and needs arguments")
    for a in args:
        if not is_truthy(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    if not args:
        raise TemplateError("or needs arguments")
    for a in args:
        if is_truthy(a):
            return a
    return args[-1]


FUNCS["and"] = _and
FUNCS["or"] = _or
FUNCS["not"] = lambda a: not is_truthy(a)


# -- Docker's formatter ----------------------------------------------------------------

def tabwrite(text: str, minwidth: int = 10, padding: int = 3) -> str:
    """Align tab-separated cells like Go's ``tabwriter`` (as Docker configures it).

    A cell is tab-terminated text; the last cell of a line is not aligned. Column
    widths are computed over each block of consecutive lines that have that column."""
    lines = text.split("\n")
    rows = [line.split("\t") for line in lines]
    widths: list[list[int]] = [[0] * max(len(r) - 1, 0) for r in rows]

    def fill(col: int, start: int, end: int) -> None:
        # lines start..end-1 all have a terminated cell in column ``col``
        width = max(len(rows[i][col]) for i in range(start, end)) + padding
        width = max(width, minwidth)
        for i in range(start, end):
            widths[i][col] = width
        # sub-blocks for the next column
        i = start
        while i < end:
            if len(rows[i]) - 1 > col + 1:
                j = i
                while j < end and len(rows[j]) - 1 > col + 1:
                    j += 1
                fill(col + 1, i, j)
                i = j
            else:
                i += 1

    i = 0
    while i < len(rows):
        if len(rows[i]) > 1:
            j = i
            while j < len(rows) and len(rows[j]) > 1:
                j += 1
            fill(0, i, j)
            i = j
        else:
            i += 1
    out = []
    for row, ws in zip(rows, widths, strict=True):
        out.append("".join(cell.ljust(w) for cell, w in zip(row, ws, strict=False)) + row[-1])
    return "\n".join(out)


def render(fmt: str, items: Iterable[Any], header: Mapping[str, str] | None = None,
           funcs: Mapping[str, Callable[..., Any]] | None = None) -> str:
    """Render ``items`` with a Docker ``--format`` string.

    ``header`` maps field names to column titles for ``table`` formats (Docker's
    "header context"); a field missing from it renders with an empty title."""
    is_table = fmt.startswith("table")
    if is_table:
        fmt = fmt[len("table"):]
    fmt = fmt.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    tmpl = Template(fmt, funcs)
    out: list[str] = []
    if is_table:
        head = tmpl.execute(_Header(header or {}))
        if head.strip():
            out.append(head + "\n")
    for item in items:
        out.append(tmpl.execute(item) + "\n")
    text = "".join(out)
    return tabwrite(text) if is_table else text


class _Header(dict):
    """Header context: every field and method evaluates to its column title."""

    def __init__(self, names: Mapping[str, str]) -> None:
        super().__init__(names)

    def get(self, key: Any, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key, "")


def truncate_id(ident: str, length: int = 12) -> str:
    """A short id: the ``sha256:`` prefix dropped, 12 hex characters kept."""
    if ":" in ident:
        ident = ident.split(":", 1)[1]
    return ident[:length]


# -- human-readable values -------------------------------------------------------------

def human_duration(seconds: float) -> str:
    """Docker's (go-units) ``HumanDuration``: ``Less than a second``, ``3 seconds``,
    ``About a minute``, ``5 minutes``, ``About an hour``, ``3 hours``, ``2 days``..."""
    secs = int(seconds)
    if secs < 1:
        return "Less than a second"
    if secs == 1:
        return "1 second"
    if secs < 60:
        return f"{secs} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600 / 24 / 365)} years"


_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def human_size(size: float, precision: int = 3, binary: bool = False) -> str:
    """Docker's ``HumanSizeWithPrecision``: decimal units by default (``4.26MB``),
    ``precision`` significant digits."""
    base = 1024.0 if binary else 1000.0
    units = _BINARY_UNITS if binary else _DECIMAL_UNITS
    size = float(size)
    i = 0
    while size >= base and i < len(units) - 1:
        size /= base
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def container_status(state: Mapping[str, Any], now: float, started: float = 0.0,
                     finished: float = 0.0) -> str:
    """Docker's one-line container status (the ``Status`` of ``GET /containers/json``):
    ``Up 3 seconds``, ``Up 2 hours (healthy)``, ``Up 5 minutes (Paused)``,
    ``Restarting (1) 4 seconds ago``, ``Exited (0) 5 seconds ago``, ``Created``,
    ``Removal In Progress``, ``Dead``.

    ``state`` is the inspect ``State`` object; ``started``/``finished`` are its
    ``StartedAt``/``FinishedAt`` as Unix times (0 when never)."""
    code = state.get("ExitCode", 0)
    if state.get("Running"):
        if state.get("Paused"):
            return f"Up {human_duration(now - started)} (Paused)"
        if state.get("Restarting"):
            return f"Restarting ({code}) {human_duration(now - finished)} ago"
        health = (state.get("Health") or {}).get("Status")
        if health:
            label = "health: starting" if health == "starting" else health
            return f"Up {human_duration(now - started)} ({label})"
        return f"Up {human_duration(now - started)}"
    if state.get("RemovalInProgress") or state.get("Status") == "removing":
        return "Removal In Progress"
    if state.get("Dead"):
        return "Dead"
    if not started:
        return "Created"
    if not finished:
        return ""
    return f"Exited ({code}) {human_duration(now - finished)} ago"
