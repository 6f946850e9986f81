"""Reading what users and servers hand to steadylm: bounded, strict, one error per problem.

Every file steadylm reads - training data, prompts, caches, results, ratings, key files, configs
- and every JSON answer from a server goes through here, so the same input gets the same one-line
error wherever it is read:

* **Only regular files.** A FIFO with no writer blocks ``open()`` forever and ``/dev/zero`` never
  ends; both are refused from ``stat()`` before anything is opened.
* **Bounded lines.** One JSONL line, prompt or perturbation input line may hold at most
  `MAX_LINE_BYTES` (16 MiB); a longer one is refused as soon as the limit is passed, so a 50 MB
  single line costs 16 MiB of memory, not 50 MB or more.
* **UTF-8 named by line.** Text that is not UTF-8 or holds NUL bytes is named with its line.
* **JSON nesting.** Real inputs nest a handful of levels (a chat conversation: 4); anything
  deeper than `MAX_JSON_DEPTH` (100) is refused - the standard library would otherwise raise
  ``RecursionError`` (a traceback) at about 1,000 levels.
* **Lone surrogates.** JSON may spell ``"\\ud800"``, a UTF-16 half that is not a character: it
  cannot be written back as UTF-8, so a file holding one is refused with the line named, and a
  server answer has it replaced by U+FFFD (counted; the caller reports the count).

Written here rather than taken from a library: ``json``, ``tomllib`` and ``pathlib`` do the
parsing; what they lack (the limits above) is a few lines each.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .errors import DataError

#: the longest line (JSONL record, prompt, perturbation input) steadylm reads
MAX_LINE_BYTES = 16 * 1024 * 1024
#: the deepest JSON nesting steadylm accepts (objects and arrays)
MAX_JSON_DEPTH = 100

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def check_regular_file(path: str | os.PathLike, *, error: type[Exception] = DataError, what: str = "") -> Path:
    """``path`` as a `Path` if it is a readable regular file; else ``error`` with one line.

    Uses ``stat()`` only: opening a FIFO would block until a writer appears."""
    p = Path(path)
    label = f"{what} {p}" if what else str(p)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{label}: no such file") from None
    except OSError as e:
        raise error(f"{label}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{label}: is a folder; expected a file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else \
            "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
        raise error(f"{label}: is {kind}; steadylm reads regular files only (a FIFO or device may never end)")
    return p


def decode(raw: bytes, where: str, *, error: type[Exception] = DataError, first_line: int = 1) -> str:
    """UTF-8 text of ``raw`` (a leading BOM dropped); NUL bytes and invalid UTF-8 are ``error``
    naming the line."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise error(f"{where}: binary data (NUL byte at offset {nul}), expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + first_line
        raise error(f"{where}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} on line {line})") from None
    return text.removeprefix("\ufeff") if first_line == 1 else text


def read_bytes(path: str | os.PathLike, *, error: type[Exception] = DataError, what: str = "") -> bytes:
    """The bytes of a regular file (see `check_regular_file`)."""
    p = check_regular_file(path, error=error, what=what)
    try:
        return p.read_bytes()
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror})") from None


def read_text(path: str | os.PathLike, *, error: type[Exception] = DataError, what: str = "") -> str:
    """The UTF-8 text of a regular file: one document, no line limit."""
    return decode(read_bytes(path, error=error, what=what), str(path), error=error)


def _raw_lines(f: BinaryIO, where: str, error: type[Exception], max_line_bytes: int) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes without the newline, whether a newline ended it), refusing a line
    longer than ``max_line_bytes`` once that many bytes are read."""
    n = 0
    while True:
        raw = f.readline(max_line_bytes + 1)
        if not raw:
            return
        n += 1
        ended = raw.endswith(b"\n")
        if len(raw) > max_line_bytes and not (ended and len(raw) == max_line_bytes + 1):
            raise error(f"{where}:{n}: line longer than {_mib(max_line_bytes)}, the limit for one line")
        yield n, raw[:-1] if ended else raw, ended


def iter_lines(path: str | os.PathLike, *, error: type[Exception] = DataError, what: str = "",
               max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of a UTF-8 file, or of standard input for ``"-"``;
    ``\\r\\n`` endings lose their ``\\r``; a BOM at the start is dropped."""
    if str(path) == "-":
        yield from _decoded_lines(sys.stdin.buffer, "<stdin>", error, max_line_bytes)
        return
    p = check_regular_file(path, error=error, what=what)
    try:
        with open(p, "rb") as f:
            yield from _decoded_lines(f, str(p), error, max_line_bytes)
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror})") from None


def _decoded_lines(f: BinaryIO, where: str, error: type[Exception], max_line_bytes: int) -> Iterator[tuple[int, str]]:
    for n, raw, _ in _raw_lines(f, where, error, max_line_bytes):
        text = decode(raw, where, error=error, first_line=n)
        if n == 1:
            text = text.removeprefix("\ufeff")
        yield n, text.removesuffix("\r")


def json_depth(obj: Any) -> int:
    """How deeply ``obj``'s lists and dicts nest (a scalar is 0); iterative, so any depth works."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = o.values()
        elif not isinstance(o, list):
            continue
        depth = max(depth, d)
        stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return depth


def _strings(obj: Any) -> Iterator[str]:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, str):
            yield o
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)


def replace_surrogates(obj: Any) -> tuple[Any, int]:
    """``obj`` with every lone surrogate in its strings (keys too) replaced by U+FFFD, and how
    many were replaced."""
    count = 0

    def fix(o: Any) -> Any:
        nonlocal count
        if isinstance(o, str):
            new, k = _SURROGATE.subn("\ufffd", o)
            count += k
            return new
        if isinstance(o, dict):
            return {fix(k): fix(v) for k, v in o.items()}
        if isinstance(o, list):
            return [fix(v) for v in o]
        return o

    if json_depth(obj) > MAX_JSON_DEPTH:  # fix() recurses; loads_json refuses deeper input first
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    out = fix(obj)
    return out, count


def loads_json(text: str, where: str, *, error: type[Exception] = DataError, surrogates: str = "error") -> Any:
    """``json.loads`` with steadylm's limits: invalid JSON, nesting deeper than `MAX_JSON_DEPTH`
    and (``surrogates="error"``) lone surrogates are ``error`` naming ``where``;
    ``surrogates="replace"`` returns ``(obj, count)`` with them replaced by U+FFFD."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        at = f" (line {e.lineno} column {e.colno})" if "\n" in text.strip() else ""
        raise error(f"{where}: not valid JSON ({e.msg}{at})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; refused") from None
    # cheap tests first: nesting needs that many brackets, surrogates need a \\uD8.. escape
    if (text.count("[") + text.count("{") > MAX_JSON_DEPTH) and json_depth(obj) > MAX_JSON_DEPTH:
        raise error(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; refused")
    has = _SURROGATE_ESCAPE.search(text) is not None and any(_SURROGATE.search(s) for s in _strings(obj))
    if surrogates == "replace":
        return replace_surrogates(obj) if has else (obj, 0)
    if has:
        raise error(f"{where}: text holds a lone surrogate (an escaped UTF-16 half such as \\ud800, not a character); "
                    "fix the file")
    return obj


def read_json(path: str | os.PathLike, *, error: type[Exception] = DataError, what: str = "") -> Any:
    """One JSON document from a regular file (`loads_json`'s checks, the file named)."""
    return loads_json(read_text(path, error=error, what=what), f"{what} {path}".strip(), error=error)


def read_json_object_or_empty(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path``, or ``{}`` when it is missing, unreadable or not an object:
    for files that only decorate (a summary beside a run), never for inputs a result rests on."""
    try:
        obj = read_json(path)
    except DataError:
        return {}
    return obj if isinstance(obj, dict) else {}


def iter_jsonl(path: str | os.PathLike, *, error: type[Exception] = DataError, what: str = "",
               max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a JSONL file, each checked by
    `loads_json` and named ``PATH:LINE`` in errors."""
    where = f"{what} {path}".strip()
    for n, line in iter_lines(path, error=error, what=what, max_line_bytes=max_line_bytes):
        if line.strip():
            yield n, loads_json(line, f"{where}:{n}", error=error)


def read_jsonl_tail_tolerant(path: str | os.PathLike, *, max_line_bytes: int = MAX_LINE_BYTES) -> tuple[list[Any], int | None]:
    """The records of an append-only JSONL log that a kill may have cut mid-write (a cache).

    Returns (records, cut): ``cut`` is the byte offset where a torn last line starts (a final
    line without its newline that is not valid JSON), for the writer to truncate there before
    it appends, else None. A complete line that does not parse is skipped (it is not a torn
    write, and the log stays usable)."""
    p = check_regular_file(path)
    out: list[Any] = []
    offset, cut = 0, None
    with open(p, "rb") as f:
        for n, raw, ended in _raw_lines(f, str(p), DataError, max_line_bytes):
            try:
                out.append(loads_json(raw.decode("utf-8"), f"{p}:{n}"))
            except (UnicodeDecodeError, DataError):
                if not ended:
                    cut = offset
            offset += len(raw) + ended
    return out, cut
