"""Reading and writing Caffe's files: prototxt text, .caffemodel and .binaryproto.

Text is parsed by ``google.protobuf.text_format`` against symnet's Caffe schema
(``symnet.formats.proto``), so every form Caffe's own reader takes is accepted: ``#``
comments, single and double quotes with escapes, adjacent strings concatenated, enums by
name or number, repeated fields given one value at a time or as ``[a, b]``, the optional
``:`` before a message, ``{}`` or ``<>`` around a message, ``,``/``;`` separators, and
every number form (``0x1F``, ``017``, ``1e-3``, ``2.5f``, ``inf``, ``nan``).

Every failure is a :class:`PrototxtError` naming the file, line and column, what was
found and what was expected; an unknown field names the layer it is in and suggests the
closest field name. Nothing else escapes from the readers, whatever the input.

``parse_net`` returns the message as written; ``symnet.formats.upgrade.upgrade_net``
brings old dialects (V0/V1 layers, ``input:`` fields) to the current form, as Caffe does
on load.

Size limits: text files (prototxt, solver prototxt, the list files of data layers) and
.binaryproto files (mean images) are read up to ``SYMNET_MAX_TEXT_BYTES`` bytes (an
integer, optionally with a K, M or G suffix for KiB, MiB, GiB; default 64 MiB); a
.caffemodel file up to 2 GiB - 1 (``INT_MAX``, Caffe's own limit for binary protos),
and from a device or pipe up to ``SYMNET_MAX_TEXT_BYTES`` like the others. A
larger file -- or a device or pipe that keeps giving bytes, such as ``/dev/zero`` -- is
a :class:`PrototxtError` naming the file and the limit after reading at most the limit
plus one byte.
"""
from __future__ import annotations

import difflib
import os
import re
import secrets

import numpy as np
from google.protobuf import text_format

from symnet.formats.proto import caffe_pb2
from symnet.formats.proto import schema as _schema
from symnet.errors import SymnetError

__all__ = [
    "PrototxtError", "max_text_bytes", "read_limited", "parse_net", "parse_solver",
    "parse_text", "read_net_binary", "write_net_binary", "read_blobproto",
    "write_blobproto", "blob_to_array", "array_to_blob", "to_text", "write_text",
]

# No message of Caffe's schema contains itself, so real files nest a handful of levels
# (SolverParameter > NetParameter > LayerParameter > ConvolutionParameter >
# FillerParameter); the bound only guards the parser.
_MAX_DEPTH = 64


def _parse_options():
    import inspect
    try:
        params = inspect.signature(text_format.Parse).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return {}
    # max_recursion_depth is missing from older protobuf releases.
    return {"max_recursion_depth": _MAX_DEPTH} if "max_recursion_depth" in params else {}


_PARSE_OPTIONS = _parse_options()


class PrototxtError(SymnetError, ValueError):
    """A Caffe file (prototxt text, caffemodel, binaryproto) could not be read or written.

    ``filename``, ``line`` and ``column`` (1-based; ``None`` where they do not apply)
    locate the problem.
    """

    def __init__(self, message, *, filename=None, line=None, column=None):
        super().__init__(message)
        self.filename = filename
        self.line = line
        self.column = column


# ----------------------------------------------------------------------------- limits

TEXT_LIMIT_ENV = "SYMNET_MAX_TEXT_BYTES"
DEFAULT_MAX_TEXT_BYTES = 64 << 20
# Caffe reads binary protos with CodedInputStream::SetTotalBytesLimit(INT_MAX).
MAX_BINARY_BYTES = 2**31 - 1
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_CHUNK = 1 << 20


def max_text_bytes() -> int:
    """The most bytes a text file (or .binaryproto) may hold: ``SYMNET_MAX_TEXT_BYTES``
    (bytes, or with a K/M/G suffix), 64 MiB when unset."""
    raw = os.environ.get(TEXT_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_TEXT_BYTES
    m = re.fullmatch(r"([0-9]+)\s*([KMG]?)(?:i?B)?", raw, re.IGNORECASE)
    if m is None or int(m.group(1)) <= 0:
        raise PrototxtError(f"{TEXT_LIMIT_ENV}={raw!r}: expected a positive number of "
                            f"bytes, e.g. {DEFAULT_MAX_TEXT_BYTES} or 64M")
    return int(m.group(1)) * _SUFFIXES[m.group(2).upper()]


def _kind(mode) -> str:
    import stat
    for test, name in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "pipe (FIFO)"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "file"


def _a(what) -> str:
    return ("an " if what[:1] in "aeioAEIOH" else "a ") + what


def read_limited(path, *, what="file", limit=None, error=None) -> bytes:
    """The bytes of the file at ``path``, at most ``limit`` of them (default
    :func:`max_text_bytes`; for a device or pipe never more than that). A larger file,
    or a device or pipe giving more, raises ``error`` (a :class:`PrototxtError` unless
    another SymnetError class is given) naming the path, the limit and how to raise it;
    no more than ``limit + 1`` bytes are read. A folder, a missing or unreadable file
    raise ``error`` too."""
    error = error or PrototxtError
    path = os.fspath(path)
    text_limit = limit is None
    limit = max_text_bytes() if text_limit else int(limit)
    how = (f"set {TEXT_LIMIT_ENV} to a larger number of bytes to read it" if text_limit
           else "this is the most that can be read")

    def fail(message):
        e = error(message)
        if isinstance(e, PrototxtError):
            e.filename = path
        return e

    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise fail(f"{path}: no such file (expected {_a(what)})") from None
    except IsADirectoryError:
        raise fail(f"{path}: is a folder; expected {_a(what)}") from None
    except OSError as e:
        raise fail(f"{path}: cannot read the file: {e.strerror or e}") from None
    with f:
        try:
            st = os.fstat(f.fileno())
            kind = _kind(st.st_mode)
            if kind != "file" and not text_limit and limit > max_text_bytes():
                # a device or pipe has no size to check first: whatever it is read as,
                # it gets the text limit, so /dev/zero cannot fill the memory
                limit, text_limit = max_text_bytes(), True
                how = f"set {TEXT_LIMIT_ENV} to a larger number of bytes to read it"
            if kind == "file" and st.st_size > limit:
                raise fail(f"{path}: the file holds {st.st_size} bytes, more than the "
                           f"limit of {limit} bytes for {_a(what)}; {how}")
            chunks, total = [], 0
            while total <= limit:
                chunk = f.read(min(_CHUNK, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as e:
            raise fail(f"{path}: cannot read the file: {e.strerror or e}") from None
        except MemoryError:
            raise fail(f"{path}: out of memory after reading {total} bytes of "
                       f"{_a(what)}") from None
    if total > limit:
        source = "the file" if kind == "file" else f"the {kind}"
        raise fail(f"{path}: {source} gives more than the limit of {limit} bytes for "
                   f"{_a(what)}; {how}")
    return b"".join(chunks)


# ----------------------------------------------------------------------------- sources

def _looks_like_path(text: str) -> bool:
    """A str argument is a path when it could be one and is not prototxt text."""
    if (not text or len(text) > 4096 or "\n" in text or "\0" in text or "{" in text
            or ":" in text or "#" in text or text.strip() != text):
        return False
    return (os.path.exists(text) or "/" in text or os.sep in text
            or re.search(r"\.[A-Za-z]\w{0,11}$", text) is not None)


def _read_source(source, filename):
    """(text or bytes, display name) of a path, path-like, text or bytes argument."""
    if isinstance(source, os.PathLike) or (isinstance(source, str)
                                           and _looks_like_path(source)):
        path = os.fspath(source)
        if not os.path.exists(path) and not os.path.islink(path):
            raise PrototxtError(f"{path}: no such file (expected a prototxt path or "
                                f"prototxt text)", filename=path)
        return read_limited(path, what="prototxt file"), filename or path
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), filename or "<bytes>"
    if isinstance(source, str):
        return source, filename or "<string>"
    raise TypeError(f"expected a path or prototxt text, got {type(source).__name__}")


def _decode(data, name):
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[:e.start]
        line = before.count(b"\n") + 1
        col = len(before) - (before.rfind(b"\n") + 1) + 1
        raise PrototxtError(
            f"{name}:{line}:{col}: found the byte 0x{data[e.start]:02x}, which is not "
            f"valid UTF-8; expected UTF-8 text (a prototxt file; is this a binary "
            f"file?)", filename=name, line=line, column=col) from None


# ----------------------------------------------------------------------------- parsing

def parse_text(source, message_type, *, filename=None):
    """Parse prototxt text into a new message of ``message_type`` (a caffe_pb2 class).

    ``source`` is a path (str or path-like) or the text itself (str or bytes). A str
    without newline, ``{``, ``:`` or ``#`` is taken as a path. ``filename`` names the
    text in error messages.
    """
    data, name = _read_source(source, filename)
    text = _decode(data, name)
    if text.startswith("\ufeff"):  # a byte-order mark left by some Windows editors
        text = text[1:]
    msg = message_type()
    try:
        text_format.Parse(text, msg, **_PARSE_OPTIONS)
    except text_format.ParseError as e:
        try:
            error = _explain(e, text, name, msg.DESCRIPTOR)
        except Exception:  # noqa: BLE001 - the plain message beats a crash
            line, col = e.GetLine(), e.GetColumn()
            error = PrototxtError(f"{name}:{line}:{col}: {_short(str(e), 300)}",
                                  filename=name, line=line, column=col)
        raise error from None
    except RecursionError:
        raise PrototxtError(f"{name}: messages nested too deeply to parse; expected a "
                            f"prototxt file", filename=name) from None
    except MemoryError:
        raise PrototxtError(f"{name}: too large to parse", filename=name) from None
    except Exception as e:  # noqa: BLE001 - nothing but PrototxtError may escape
        raise PrototxtError(f"{name}: cannot parse as {msg.DESCRIPTOR.name} text: "
                            f"{type(e).__name__}: {_short(str(e))}",
                            filename=name) from None
    return msg


def parse_net(source, *, filename=None):
    """A NetParameter (net prototxt: deploy or train/val) exactly as written.

    Old dialects are kept as they are; pass the result to
    ``symnet.formats.upgrade.upgrade_net`` to get the current form.
    """
    return parse_text(source, caffe_pb2.NetParameter, filename=filename)


def parse_solver(source, *, filename=None):
    """A SolverParameter (solver prototxt) exactly as written.

    ``symnet.formats.upgrade.upgrade_solver`` turns ``solver_type: ENUM`` into
    ``type: "Name"`` and upgrades inline nets.
    """
    return parse_text(source, caffe_pb2.SolverParameter, filename=filename)


# ----------------------------------------------------------------------------- errors

_SCAN = re.compile(r"""
    (?P<ws>[ \t\r\n\f\v]+|\#[^\n]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<num>[-+]?(?:[0-9]|\.[0-9])[0-9A-Za-z_.+-]*)
  | (?P<punct>.)
""", re.VERBOSE | re.DOTALL)

_INT_RANGES = {
    "int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1),
    "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1),
}
_TYPE_NAMES = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32",
               8: "bool", 9: "string", 12: "bytes", 13: "uint32", 14: "enum",
               11: "message"}


def _short(text, limit=60):
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _offset(text, line, column):
    """Character offset of a 1-based line and column (as text_format counts them)."""
    pos = 0
    for _ in range(line - 1):
        nl = text.find("\n", pos)
        if nl < 0:
            return len(text)
        pos = nl + 1
    return min(pos + max(column - 1, 0), len(text))


def _token_span(text, pos):
    """(start, token) of the token at or after ``pos`` past blanks and comments;
    (len(text), None) at the end."""
    while pos < len(text):
        m = _SCAN.match(text, pos)
        if m.lastgroup != "ws":
            return m.start(), m.group(0)
        pos = m.end()
    return len(text), None


def _token_at(text, pos):
    return _token_span(text, pos)[1]


def _describe(token):
    if token is None:
        return "the end of the file"
    if token[:1] in "\"'":
        return f"the string {_short(token)}"
    if token[:1].isalpha() or token[:1] == "_":
        return f'"{_short(token)}"'
    if token[0].isdigit() or token[0] in "+-.":
        return _short(token)
    return repr(_short(token))


class _Context:
    """Where an offset sits in the text: the chain of open messages and the layer."""

    def __init__(self, text, pos):
        self.text = text
        self.stack = []  # [name, open offset, open line, {child name: count}, index]
        counts = {}
        prev_word = None
        line = 1
        i = 0
        while i < pos:
            m = _SCAN.match(text, i)
            kind, tok = m.lastgroup, m.group(0)
            if kind == "ws":
                line += tok.count("\n")
            elif tok in "{<" and kind == "punct":
                name = prev_word or "?"
                index = counts.get(name, 0)
                counts[name] = index + 1
                self.stack.append([name, m.start(), line, counts, index])
                counts = {}
                prev_word = None
            elif tok in "}>" and kind == "punct":
                if self.stack:
                    counts = self.stack.pop()[3]
                prev_word = None
            elif kind == "word":
                prev_word = tok
            elif tok != ":":
                prev_word = None
            i = m.end()

    def layer(self):
        """(keyword, index, open offset) of the outermost enclosing layer, or None."""
        for name, start, _line, _counts, index in self.stack:
            if name in ("layer", "layers"):
                return name, index, start
        return None

    def layer_fields(self, start):
        """name and type written directly in the block that opens at ``start``."""
        found = {}
        depth = 0
        i = start
        prev_word = None
        expect = None
        text = self.text
        while i < len(text):
            m = _SCAN.match(text, i)
            kind, tok = m.lastgroup, m.group(0)
            i = m.end()
            if kind == "ws":
                continue
            if kind == "punct" and tok in "{<":
                depth += 1
                prev_word = None
                continue
            if kind == "punct" and tok in "}>":
                depth -= 1
                if depth <= 0:
                    break
                continue
            if depth == 1:
                if expect and kind in ("str", "word"):
                    found.setdefault(expect, tok.strip("\"'") if kind == "str" else tok)
                    expect = None
                elif kind == "word" and tok in ("name", "type"):
                    prev_word = tok
                elif tok == ":" and prev_word:
                    expect, prev_word = prev_word, None
                else:
                    prev_word = expect = None
            if len(found) == 2:
                break
        return found

    def describe_layer(self):
        info = self.layer()
        if info is None:
            return None
        keyword, index, start = info
        fields = self.layer_fields(start)
        if "name" in fields:
            return f'{keyword} "{fields["name"]}"'
        kind = f' (type "{fields["type"]}")' if "type" in fields else ""
        return f"{keyword} #{index + 1}{kind}"


def _message_fields(full_name):
    try:
        desc = _schema.pool().FindMessageTypeByName(full_name)
    except KeyError:
        return None
    return desc


def _unknown_field_hint(desc, name):
    names = [f.name for f in desc.fields]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if close:
        return f'; did you mean "{close[0]}"?'
    lower = {n.lower(): n for n in names}
    if name.lower() in lower:
        return f'; did you mean "{lower[name.lower()]}"?'
    # A parameter written outside its *_param block, e.g. num_output in the layer.
    homes = [f.name for f in desc.fields if f.message_type is not None
             and name in f.message_type.fields_by_name]
    if homes:
        shown = ", ".join(f"{h} {{ }}" for h in homes[:3])
        more = " or another block" if len(homes) > 3 else ""
        return f'; "{name}" belongs inside {shown}{more}'
    return ""


def _explain(err, text, name, root_desc):
    """A PrototxtError with file, line, column, found and expected for a ParseError."""
    line, col = err.GetLine(), err.GetColumn()
    raw = str(err)
    msg = re.sub(r"^\d+(:\d+)? : ", "", raw)
    if line is not None:
        lines = text.split("\n")
        cur = lines[line - 1] if 0 < line <= len(lines) else ""
        prefix = "'" + cur + "': "
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
        elif msg.startswith("'"):
            msg = re.sub(r"^'.*?': ", "", msg, count=1)
        pos = _offset(text, line, col or 1)
    else:
        cur, pos = "", 0
    token = _token_at(text, pos)
    found = _describe(token)
    ctx = None

    def where():
        nonlocal ctx
        if ctx is None:
            ctx = _Context(text, pos)
        return ctx

    problem = None
    m = re.match(r'Message type "([\w.]+)" has no field named "([^"]*)"', msg)
    if m:
        desc = _message_fields(m.group(1))
        inside = where().describe_layer()
        owner = m.group(1).split(".")[-1]
        place = f"in {inside}" if inside else f"in {owner}"
        if inside and owner not in ("LayerParameter", "V1LayerParameter"):
            block = where().stack[-1][0] if where().stack else owner
            place = f"in {block} of {inside}"
        if m.group(2) in ("layer", "layers") and inside:
            hint = (f'; a layer cannot hold another layer: is a closing "}}" missing '
                    f"before line {line}?")
        else:
            hint = _unknown_field_hint(desc, m.group(2)) if desc is not None else ""
        problem = (f'found unknown field "{_short(m.group(2))}" {place}; expected a '
                   f"field of {owner}{hint}")
    m = re.match(r'Message type "([\w.]+)" should not have multiple "(\w+)"', msg)
    if problem is None and m:
        owner = m.group(1).split(".")[-1]
        inside = where().describe_layer()
        place = f" in {inside}" if inside else ""
        problem = (f'found a second "{m.group(2)}"{place}; expected "{m.group(2)}" at '
                   f"most once ({owner}.{m.group(2)} is not a repeated field)")
    if problem is None:
        m = re.match(r'Enum type "([\w.]+)" has no value (named|with number) (.*?)\.?$',
                     msg)
        if m:
            enum_name = m.group(1)
            try:
                values = [v.name for v in
                          _schema.pool().FindEnumTypeByName(enum_name).values]
            except KeyError:
                values = []
            close = difflib.get_close_matches(m.group(3), values, n=1, cutoff=0.5)
            hint = f'; did you mean {close[0]}?' if close else ""
            shown = ", ".join(values[:12]) + (", ..." if len(values) > 12 else "")
            problem = (f"found {found}, expected a value of {enum_name.split('.', 1)[-1]}"
                       f" ({shown}){hint}")
    if problem is None:
        m = re.match(r'Expected "(.)"\.', msg)
        if m:
            want = m.group(1)
            start, _tok = _token_span(text, pos)
            at_end = token is None or _token_at(text, start + len(token)) is None
            if want in "}>" and at_end:
                c = where()
                opened = ""
                if c.stack:
                    block, _start, open_line = c.stack[-1][:3]
                    opened = f' to close "{block} {{" opened at line {open_line}'
                after = f" after {found}" if token is not None else ""
                problem = (f'found the end of the file{after}, expected "{want}"'
                           f"{opened}")
            else:
                problem = f'found {found}, expected "{want}"'
    if problem is None and msg.startswith("Expected identifier or number"):
        problem = f"found {found}, expected a field name"
    if problem is None and msg.startswith("Expected identifier"):
        problem = f"found {found}, expected a name"
    if problem is None and msg.startswith("Expected string"):
        problem = f"found {found}, expected a quoted string"
    if problem is None and msg.startswith("String missing ending quote"):
        problem = f"found {found}, expected a closing quote on the same line"
    if problem is None and ("codec can't" in msg or "escape" in msg.lower()):
        problem = (f"found {found}, expected a string with valid escapes "
                   f"({_short(msg, 100)})")
    if problem is None and msg.startswith("Couldn't parse string"):
        problem = (f"found {found}, expected a string of valid UTF-8 "
                   f"({_short(msg.split(': ', 1)[-1], 80)})")
    if problem is None:
        m = re.match(r"(Value out of range|Couldn't parse integer|Expected integer)", msg)
        if m:
            problem = f"found {found}, expected {_expected_integer(root_desc, where(), pos)}"
    if problem is None and (msg.startswith("Couldn't parse float")
                            or msg.startswith("Invalid octal float")
                            or msg.startswith("Expected double")):
        problem = f"found {found}, expected a number"
    if problem is None and msg.startswith('Expected "true" or "false"'):
        problem = f"found {found}, expected true or false"
    if problem is None and "does not have extensions" in msg:
        problem = ("found an extension name in [brackets], expected a field name "
                   "(Caffe's schema has no extensions)")
    if problem is None and msg.startswith("Message too deep"):
        problem = f"found messages nested more than {_MAX_DEPTH} deep"
    if problem is None:
        problem = f"found {found}: {_short(msg, 200)}"
    loc = f"{name}:{line}:{col}" if line is not None else name
    body = f"{loc}: {problem}"
    if cur and len(cur) <= 300 and col is not None:
        shown = "".join(c if c.isprintable() else ("?" if c != "\t" else " ")
                        for c in cur)
        body += f"\n    {shown}\n    {' ' * (col - 1)}^"
    return PrototxtError(body, filename=name, line=line, column=col)


def _expected_integer(root_desc, ctx, pos):
    """'an integer in [lo, hi]' for the field whose value was being read."""
    desc = root_desc
    for entry in ctx.stack:
        field = desc.fields_by_name.get(entry[0]) if desc is not None else None
        desc = field.message_type if field is not None else None
    # The field name is the last word before the ':' (and '[') that precede the value.
    before = ctx.text[max(0, pos - 2000):pos]
    m = re.search(r"([A-Za-z_]\w*)\s*:?\s*(\[[^\]]*)?$", before)
    if desc is not None and m and m.group(1) in desc.fields_by_name:
        field = desc.fields_by_name[m.group(1)]
        tname = _TYPE_NAMES.get(field.type, "")
        if tname in _INT_RANGES:
            lo, hi = _INT_RANGES[tname]
            return f"an integer in [{lo}, {hi}] ({tname} field {field.name})"
    return "an integer in range"


# ----------------------------------------------------------------------------- text out

def to_text(message) -> str:
    """The prototxt text of a message, as Caffe prints it (two-space indents)."""
    return text_format.MessageToString(message, as_utf8=True)


def write_text(message, path):
    """Write a message as prototxt text, atomically (temp file + os.replace)."""
    _atomic_write(path, to_text(message).encode("utf-8"))


# ----------------------------------------------------------------------------- binary

TEMP_SUFFIX = ".symnet-tmp"       # temporary files of atomic writes: .<target>.<12 hex>.symnet-tmp


def create_temp(path):
    """(fd, name) of a new temporary file beside ``path``, ``.<name>.<12 hex
    digits>.symnet-tmp``, opened for writing. Its mode is what the umask leaves of 0666,
    as for any file the user's tools write, so the file renamed over ``path`` has the
    permissions a plain write would give it."""
    directory, name = os.path.split(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(17, "no free temporary name", path)


def replace_file(path, fill, error=None):
    """Write the file ``path`` at once: ``fill(fd, tmp)`` writes a new temporary file
    beside it (:func:`create_temp`; ``fill`` closes ``fd``, writing through it or by the
    name ``tmp``), which is then flushed to disk and renamed over ``path``. On any
    failure or interrupt the temporary file is removed and ``path`` is as it was; an
    OSError becomes ``error(reason)`` when ``error`` is given."""
    path = os.fspath(path)
    try:
        fd, tmp = create_temp(path)
    except OSError as e:
        if error is None:
            raise
        raise error(e.strerror or str(e)) from None
    try:
        fill(fd, tmp)
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if error is not None and isinstance(e, OSError):
            raise error(e.strerror or str(e)) from None
        raise


def _atomic_write(path, data: bytes):
    path = os.fspath(path)

    def fill(fd, tmp):
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    replace_file(path, fill, lambda why: PrototxtError(f"{path}: cannot write the file: "
                                                       f"{why}", filename=path))


def _serialize(message, path):
    if not message.IsInitialized():
        missing = ", ".join(message.FindInitializationErrors())
        raise PrototxtError(f"{path}: cannot write {message.DESCRIPTOR.name}: required "
                            f"fields are not set: {missing}", filename=path)
    return message.SerializeToString()


def _read_binary(path, message_type, what, limit=None):
    path = os.fspath(path)
    data = read_limited(path, what=what, limit=limit)
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except Exception as e:  # DecodeError, or anything the decoder raises on garbage
        hint = ""
        head = data[:200].lstrip()
        if head[:1].isalpha() or head[:1] == b"#":
            hint = " (it looks like text: use the prototxt reader for text files)"
        raise PrototxtError(f"{path}: not a valid {what}: the protobuf wire format is "
                            f"broken ({_short(str(e) or type(e).__name__, 100)}){hint}",
                            filename=path) from None
    if data and not msg.ListFields():
        raise PrototxtError(f"{path}: not a valid {what}: {len(data)} bytes that hold "
                            f"no {message_type.DESCRIPTOR.name} field", filename=path)
    return msg


def read_net_binary(path):
    """A NetParameter from a binary .caffemodel (layer blobs included), as written.

    Old dialects (V1 ``layers``) are kept; ``upgrade_net`` brings them up to date.
    """
    return _read_binary(path, caffe_pb2.NetParameter,
                        "binary NetParameter (.caffemodel)", limit=MAX_BINARY_BYTES)


def write_net_binary(net, path):
    """Write a NetParameter as a binary .caffemodel, atomically (temp + os.replace)."""
    path = os.fspath(path)
    _atomic_write(path, _serialize(net, path))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def blob_to_array(blob, dtype=np.float32):
    """The values of a BlobProto as an array of its shape (float32 by default).

    As Caffe's Blob::FromProto: the legacy 4-D num/channels/height/width win when any
    of them is set, else ``shape``; ``double_data`` is used when present, else ``data``.
    """
    if (blob.HasField("num") or blob.HasField("channels") or blob.HasField("height")
            or blob.HasField("width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    if any(d < 0 for d in shape):
        raise PrototxtError(f"BlobProto has a negative dimension in shape {shape}")
    if len(blob.double_data):
        values = np.array(blob.double_data, dtype=np.float64)
        source = "double_data"
    else:
        values = np.array(blob.data, dtype=np.float32)
        source = "data"
    count = 1
    for d in shape:       # Python integers: a product of huge dimensions cannot wrap
        count *= int(d)
    if values.size != count:
        raise PrototxtError(f"BlobProto of shape {list(shape)} ({count} values) holds "
                            f"{values.size} values in {source}")
    try:
        return values.astype(dtype, copy=False).reshape(shape)
    except ValueError:      # a shape numpy cannot index (the product of its sizes)
        raise PrototxtError(f"BlobProto of shape {list(shape)} cannot be held in memory "
                            f"(the product of its non-zero sizes is too large)") from None


def array_to_blob(array, *, legacy=False, double=False):
    """A BlobProto holding ``array``.

    ``shape`` is written by default (as current Caffe does); ``legacy=True`` writes the
    4-D num/channels/height/width fields instead, for arrays of at most 4 axes padded
    with leading 1s as pre-N-D Caffe stored them (an InnerProduct weight M x N as
    1 x 1 x M x N, a bias as 1 x 1 x 1 x N), which is how Caffe's Blob::ShapeEquals
    matches legacy blobs. ``double=True`` stores ``double_data``.
    """
    arr = np.asarray(array)
    if legacy and arr.ndim > 4:
        raise PrototxtError(f"legacy 4-D blob fields cannot hold an array of shape "
                            f"{list(arr.shape)}; expected at most 4 axes")
    blob = caffe_pb2.BlobProto()
    if legacy:
        dims = [1] * (4 - arr.ndim) + list(arr.shape)
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.SetInParent()
        blob.shape.dim.extend(int(d) for d in arr.shape)
    if arr.size:
        if double:
            raw, number = np.ascontiguousarray(arr, dtype="<f8").tobytes(), 8
        else:
            raw, number = np.ascontiguousarray(arr, dtype="<f4").tobytes(), 5
        # Packed repeated field appended as wire bytes: far faster than extend().
        blob.MergeFromString(bytes([number << 3 | 2]) + _varint(len(raw)) + raw)
    return blob


def read_blobproto(path):
    """A .binaryproto file (e.g. an ImageNet mean) as a float32 array of its shape."""
    blob = _read_binary(path, caffe_pb2.BlobProto, "binary BlobProto (.binaryproto)")
    try:
        return blob_to_array(blob)
    except PrototxtError as e:
        raise PrototxtError(f"{os.fspath(path)}: {e}", filename=os.fspath(path)) from None


def write_blobproto(array, path, *, legacy=False):
    """Write an array as a .binaryproto BlobProto, atomically."""
    path = os.fspath(path)
    _atomic_write(path, _serialize(array_to_blob(array, legacy=legacy), path))
