"""Caffe prototxt reader: the protobuf text format, checked against a schema.

The reader is two small stages. ``_Parser`` turns text into a tree of
``(name, value, where)`` entries, knowing only the text format's grammar.
``_build`` then checks that tree against a ``Schema`` (see ``schema.py``):
unknown fields, wrong kinds and bad enum names are errors naming
``file:line:col`` and what was expected, and the result is a ``Message`` whose
unset fields read as Caffe's defaults.

Supported syntax: nested messages written ``name { }`` or ``name: { }``
(``< >`` too), repeated fields, ``[a, b]`` lists, strings in either quote kind
(adjacent strings concatenate, C escapes), ints, floats (``1e-4``, ``-.5``,
``inf``, ``nan``), booleans, enum identifiers and ``#`` comments.

Limits, so that no input can exhaust the reader:

- a file is read up to ``MAX_BYTES``, 4 MiB (the environment variable
  ``LAYERASYNC_MAX_PROTOTXT`` sets another, in bytes or with a K, M or G
  suffix), so ``/dev/zero`` or an endless pipe is an error naming the file
  and the limit. The reader holds every token in memory: an 8 MiB file of
  ``test_iter: 1`` lines took 629 MB of resident memory (``ru_maxrss`` of
  ``proto.parse`` on it, measured 2026-12-02). The zoo's largest net,
  googlenet.prototxt, is 37 kB: the limit leaves room for any real net and
  bounds what a wrong file costs;
- messages nest at most ``MAX_DEPTH`` (100, protobuf's own limit) deep;
- an integer must fit the field's Caffe type (``int32``, ``uint32``,
  ``int64``), so ``num_output: 1e30`` or ``pad: -1`` is an error at its
  ``file:line:col``.
"""
import os
import re

from .memory import parse_size

__all__ = ['ProtoError', 'Message', 'Field', 'Schema', 'parse', 'parse_file', 'load',
           'max_bytes', 'MAX_BYTES', 'MAX_DEPTH', 'INT_RANGES']

MAX_BYTES = 4 << 20
MAX_BYTES_VARIABLE = 'LAYERASYNC_MAX_PROTOTXT'
MAX_DEPTH = 100
# Caffe's integer types: the closed range of values each can hold.
INT_RANGES = {'int32': (-2 ** 31, 2 ** 31 - 1), 'uint32': (0, 2 ** 32 - 1),
              'int64': (-2 ** 63, 2 ** 63 - 1)}


class ProtoError(ValueError):
    """A prototxt that cannot be read; the message starts with file:line:col."""


class Where(str):
    """A source location, printed as ``file:line:col``."""


_TOKEN = re.compile(r'''
    (?P<space>[ \t\r\f\v]+|\#[^\n]*)
  | (?P<newline>\n)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fF]?))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<symbol>[{}<>:,;\[\]])
''', re.VERBOSE)

_ESCAPES = {'n': '\n', 't': '\t', 'r': '\r', '\\': '\\', "'": "'", '"': '"',
            'a': '\a', 'b': '\b', 'f': '\f', 'v': '\v', '?': '?'}


def _unescape(body, where):
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != '\\':
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in '01234567':
            m = re.match(r'[0-7]{1,3}', body[i + 1:])
            out.append(chr(int(m.group(), 8)))
            i += 1 + len(m.group())
        elif e in 'xX':
            m = re.match(r'[0-9a-fA-F]{1,2}', body[i + 2:])
            if not m:
                raise ProtoError(f'{where}: bad \\x escape in string')
            out.append(chr(int(m.group(), 16)))
            i += 2 + len(m.group())
        else:
            raise ProtoError(f'{where}: unknown escape \\{e} in string')
    return ''.join(out)


class _Token:
    __slots__ = ('kind', 'text', 'where')

    def __init__(self, kind, text, where):
        self.kind, self.text, self.where = kind, text, where

    def describe(self):
        return 'end of file' if self.kind == 'eof' else repr(self.text)


def _tokenize(text, filename):
    tokens, line, line_start, pos = [], 1, 0, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        where = Where(f'{filename}:{line}:{pos - line_start + 1}')
        if m is None:
            raise ProtoError(f'{where}: unexpected character {text[pos]!r}')
        kind = m.lastgroup
        if kind == 'newline':
            line, line_start = line + 1, m.end()
        elif kind != 'space':
            tokens.append(_Token(kind, m.group(), where))
        pos = m.end()
    tokens.append(_Token('eof', '', Where(f'{filename}:{line}:{pos - line_start + 1}')))
    return tokens


class _Parser:
    """Grammar only: message := (name [':'] '{' message '}' | name ':' value)*"""

    def __init__(self, text, filename):
        self.tokens = _tokenize(text, filename)
        self.i = 0

    def peek(self):
        return self.tokens[self.i]

    def take(self):
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text, what):
        tok = self.take()
        if tok.text != text or tok.kind not in ('symbol',):
            raise ProtoError(f'{tok.where}: expected {what}, found {tok.describe()}')
        return tok

    def message(self, closing, opened=None, depth=0):
        """The entries up to ``closing`` (None: end of file); ``opened`` is the
        token that opened this message, ``depth`` how many enclose it."""
        if depth > MAX_DEPTH:
            raise ProtoError(f'{opened.where}: messages nested more than {MAX_DEPTH} deep')
        entries = []
        while True:
            tok = self.peek()
            if tok.kind == 'eof' and closing is None:
                return entries
            if tok.kind == 'symbol' and tok.text == closing:
                self.take()
                return entries
            if tok.kind != 'ident' or tok.text.startswith('-'):
                want = f"a field name or '{closing}'" if closing else 'a field name'
                raise ProtoError(f'{tok.where}: expected {want}, found {tok.describe()}')
            self.take()
            entries.extend(self.field(tok, depth))
            if self.peek().kind == 'symbol' and self.peek().text in ',;':
                self.take()

    def field(self, name, depth):
        tok = self.peek()
        colon = tok.kind == 'symbol' and tok.text == ':'
        if colon:
            self.take()
            tok = self.peek()
        if tok.kind == 'symbol' and tok.text in '{<':
            self.take()
            body = self.message('}' if tok.text == '{' else '>', tok, depth + 1)
            return [(name.text, body, name.where)]
        if not colon:
            raise ProtoError(f"{tok.where}: expected ':' or '{{' after field "
                             f"'{name.text}', found {tok.describe()}")
        if tok.kind == 'symbol' and tok.text == '[':
            self.take()
            values = []
            while not (self.peek().kind == 'symbol' and self.peek().text == ']'):
                if values:
                    self.expect(',', "',' or ']' in a list")
                values.append((name.text, self.scalar(name), name.where))
            self.take()
            return values
        return [(name.text, self.scalar(name), name.where)]

    def scalar(self, name):
        tok = self.take()
        if tok.kind == 'string':
            parts = [_unescape(tok.text[1:-1], tok.where)]
            while self.peek().kind == 'string':  # "a" "b" is "ab", as in C
                nxt = self.take()
                parts.append(_unescape(nxt.text[1:-1], nxt.where))
            return _Scalar('string', ''.join(parts), tok.where)
        if tok.kind in ('number', 'ident'):
            return _Scalar(tok.kind, tok.text, tok.where)
        raise ProtoError(f"{tok.where}: expected a value for '{name.text}', "
                         f'found {tok.describe()}')


class _Scalar:
    __slots__ = ('kind', 'text', 'where')

    def __init__(self, kind, text, where):
        self.kind, self.text, self.where = kind, text, where


# --------------------------------------------------------------------- schema

class Field:
    """One field of a message: kind is int32, uint32, int64 (``INT_RANGES``),
    float, bool, str, enum or msg."""

    def __init__(self, kind, default=None, repeated=False, values=None, message=None):
        self.kind, self.default, self.repeated = kind, default, repeated
        self.values, self.message = values, message
        self.name = None

    def describe(self):
        if self.kind == 'enum':
            return 'one of ' + ', '.join(self.values)
        if self.kind == 'msg':
            return f'a {self.schema.name} message {{ ... }}'
        if self.kind in INT_RANGES:
            low, high = INT_RANGES[self.kind]
            return f'an integer in [{low}, {high}] ({self.kind})'
        return {'float': 'a number', 'bool': 'true or false',
                'str': 'a quoted string'}[self.kind]

    @property
    def schema(self):
        # Message fields may name their schema lazily (recursive messages).
        return self.message() if callable(self.message) else self.message


class Schema:
    """A message type: an ordered set of named fields."""

    def __init__(self, name, /, **fields):
        self.name = name
        self.fields = fields
        for key, f in fields.items():
            f.name = key

    def known(self):
        return ', '.join(sorted(self.fields))


class Message:
    """A parsed message. Unset fields read as their defaults; repeated ones as [].

    ``where`` is the location of the message, ``where_of(name)`` that of a field.
    """

    def __init__(self, schema, where='<built>', values=None, positions=None):
        object.__setattr__(self, '_schema', schema)
        object.__setattr__(self, 'where', where)
        object.__setattr__(self, '_values', dict(values or {}))
        object.__setattr__(self, '_positions', dict(positions or {}))

    @property
    def schema(self):
        return self._schema

    def __getattr__(self, name):
        field = self._schema.fields.get(name)
        if field is None:
            raise AttributeError(f'{self._schema.name} has no field {name!r}')
        if name in self._values:
            return self._values[name]
        if field.repeated:
            return []
        if field.kind == 'msg':
            return Message(field.schema, self.where)
        return field.default

    def __setattr__(self, name, value):
        """Set a field in code; it no longer has a place in the file, so
        ``where_of`` it is the message's location from now on."""
        if name not in self._schema.fields:
            raise AttributeError(f'{self._schema.name} has no field {name!r}')
        self._values[name] = value
        self._positions.pop(name, None)

    def update(self, other):
        """Set every field that ``other`` (a message of the same schema) sets,
        with its locations: ``--set`` overrides keep ``--set field`` as theirs."""
        if other.schema is not self._schema:
            raise TypeError(f'cannot update a {self._schema.name} from a {other.schema.name}')
        for name, value in other.items():
            self._values[name] = value
            self._positions[name] = other.where_of(name)

    def has(self, name):
        return name in self._values

    def items(self):
        """The fields that were set, as (name, value) pairs."""
        return list(self._values.items())

    def where_of(self, name):
        return self._positions.get(name, self.where)

    def copy(self):
        values = {k: (list(v) if isinstance(v, list) else v) for k, v in self._values.items()}
        return Message(self._schema, self.where, values, self._positions)

    def __repr__(self):
        inner = ' '.join(f'{k}: {v!r}' for k, v in self._values.items())
        return f'{self._schema.name} {{ {inner} }}'


_TRUE = {'true', 'True', 't', '1'}
_FALSE = {'false', 'False', 'f', '0'}


def _convert(field, scalar):
    where, text, kind = scalar.where, scalar.text, scalar.kind

    def bad():
        found = f'string "{text}"' if kind == 'string' else repr(text)
        return ProtoError(f"{where}: field '{field.name}' expects {field.describe()}, found {found}")

    if field.kind == 'str':
        if kind != 'string':
            raise bad()
        return text
    if field.kind == 'bool':
        if text in _TRUE and kind != 'string':
            return True
        if text in _FALSE and kind != 'string':
            return False
        raise bad()
    if field.kind == 'enum':
        if kind == 'ident' and text in field.values:
            return text
        raise bad()
    if field.kind in INT_RANGES:
        if kind != 'number':
            raise bad()
        try:
            value = int(text, 0)
        except ValueError:
            raise bad() from None
        low, high = INT_RANGES[field.kind]
        if not low <= value <= high:
            raise bad()
        return value
    if field.kind == 'float':
        if kind == 'ident' and text.lstrip('-').lower() in ('inf', 'infinity', 'nan'):
            return float(text)
        if kind != 'number':
            raise bad()
        return float(int(text, 16)) if text.lower().startswith(('0x', '-0x')) else float(text.rstrip('fF'))
    raise AssertionError(field.kind)


def _build(schema, entries, where):
    msg = Message(schema, where)
    for name, value, pos in entries:
        field = schema.fields.get(name)
        if field is None:
            raise ProtoError(f"{pos}: unknown field '{name}' in {schema.name}; "
                             f'known fields: {schema.known()}')
        if field.kind == 'msg':
            if not isinstance(value, list):
                raise ProtoError(f"{pos}: field '{name}' is a message: write {name} {{ ... }}")
            value = _build(field.schema, value, pos)
        elif isinstance(value, list):
            raise ProtoError(f"{pos}: field '{name}' expects {field.describe()}, found a message")
        else:
            value = _convert(field, value)
        if field.repeated:
            msg._values.setdefault(name, []).append(value)
            msg._positions.setdefault(name, pos)
        else:
            if name in msg._values:
                raise ProtoError(f"{pos}: field '{name}' given twice "
                                 f'(first at {msg._positions[name]}); it is not repeated')
            msg._values[name] = value
            msg._positions[name] = pos
    return msg


def max_bytes():
    """The largest prototxt read: ``$LAYERASYNC_MAX_PROTOTXT`` if set, else ``MAX_BYTES``."""
    text = os.environ.get(MAX_BYTES_VARIABLE)
    if text is None:
        return MAX_BYTES
    try:
        return parse_size(text)
    except ValueError as e:
        raise ProtoError(f'{MAX_BYTES_VARIABLE}={text!r}: {e}') from None


def _too_large(filename, limit):
    return ProtoError(f'{filename}: larger than {limit:,} bytes, the limit for a prototxt; '
                      f'set {MAX_BYTES_VARIABLE} (bytes, or with a K, M or G suffix) to read more')


def parse(text, schema, filename='<string>'):
    """Parse prototxt ``text`` as a ``schema`` message; errors name ``filename``."""
    limit = max_bytes()
    if len(text) > limit:
        raise _too_large(filename, limit)
    entries = _Parser(text, filename).message(None)
    return _build(schema, entries, Where(f'{filename}:1:1'))


def parse_file(path, schema):
    """Parse the prototxt file at ``path`` (read up to ``max_bytes()``); a
    missing, unreadable or oversized file is a clear error."""
    path = os.fspath(path)
    limit = max_bytes()
    try:
        with open(path, 'rb') as f:
            raw = f.read(limit + 1)
        if len(raw) > limit:
            raise _too_large(path, limit)
        text = raw.decode('utf-8')
    except FileNotFoundError:
        raise ProtoError(f'{path}: no such file (expected a {schema.name} prototxt)') from None
    except OSError as e:
        raise ProtoError(f'{path}: cannot read it ({e.strerror}; expected a {schema.name} '
                         'prototxt)') from None
    except UnicodeDecodeError as e:
        raise ProtoError(f'{path}: not a text file ({e.reason} at byte {e.start})') from None
    return parse(text, schema, path)


def load(source, schema):
    """A ``schema`` message from a Message (returned as is), a path, or prototxt
    text (a string that names no file and holds a newline, '{' or ':')."""
    if isinstance(source, Message):
        return source
    source = os.fspath(source)
    if not os.path.exists(source) and any(c in source for c in '\n{:'):
        return parse(source, schema)
    return parse_file(source, schema)
