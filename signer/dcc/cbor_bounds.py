"""Bounded CBOR decoding: a flat pre-scan refuses what a DCC never holds, then ``cbor2`` decodes.

``cbor2`` builds objects recursively, has no nesting limit before version 6, and decodes
dozens of semantic tags (shared references that make cycles, bignums, regular expressions,
MIME messages, ...). :func:`check_cbor` walks the encoded bytes once, without recursion, and
refuses: more than :data:`~signer.dcc.limits.MAX_COSE_BYTES` bytes, nesting deeper than
:data:`~signer.dcc.limits.MAX_CBOR_DEPTH`, more than :data:`~signer.dcc.limits.MAX_CBOR_ITEMS`
items, any tag except the caller's outermost ones, simple values other than false, true and
null, reserved encodings, truncation and bytes after the item. Indefinite lengths are
accepted, since streaming encoders produce them.
"""

from dataclasses import dataclass, field
from typing import Any

import cbor2

from signer.dcc.errors import DccEncodingError
from signer.dcc.limits import MAX_CBOR_DEPTH, MAX_CBOR_ITEMS, MAX_COSE_BYTES

_BYTES, _TEXT, _ARRAY, _MAP, _TAG, _SIMPLE = 2, 3, 4, 5, 6, 7
_BREAK = 0xFF
_INDEFINITE = -1
_FALSE_TRUE_NULL = (20, 21, 22)


def decode_cbor(data: bytes, what: str, outer_tags: frozenset[int] = frozenset()) -> Any:
    """Return ``cbor2.loads(data)`` once :func:`check_cbor` accepts ``data``.

    Raises :class:`DccEncodingError` naming ``what`` (e.g. ``"CWT payload"``) otherwise.
    """
    check_cbor(data, what, outer_tags)
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
        raise DccEncodingError(f"{what} is not valid CBOR: {exc}") from None


def check_cbor(data: bytes, what: str, outer_tags: frozenset[int] = frozenset()) -> None:
    """Raise :class:`DccEncodingError` unless ``data`` is one CBOR item within the DCC limits.

    Tags in ``outer_tags`` are allowed around the outermost item only; no other tag is.
    """
    if len(data) > MAX_COSE_BYTES:
        raise DccEncodingError(
            f"{what} is {len(data)} bytes, over the limit of {MAX_COSE_BYTES} bytes"
        )
    _Scanner(data, what, outer_tags).run()


@dataclass
class _Open:
    """A container being read: ``remaining`` items to go, or ``_INDEFINITE`` until a break."""

    major: int
    remaining: int
    seen: int = 0


@dataclass
class _Scanner:
    data: bytes
    what: str
    outer_tags: frozenset[int]
    pos: int = 0
    start: int = 0
    items: int = 0
    stack: list[_Open] = field(default_factory=list)

    def run(self) -> None:
        while True:
            if self.pos >= len(self.data):
                raise self._malformed("truncated")
            self.start = self.pos
            initial = self.data[self.pos]
            self.pos += 1
            if initial == _BREAK:
                self._close_indefinite()
            else:
                opened = self._item(initial >> 5, initial & 0x1F)
                if opened is not None:
                    self._push(opened)
                    continue
            if self._complete():
                break
        if self.pos != len(self.data):
            self.start = self.pos
            trailing = len(self.data) - self.pos
            raise self._malformed(f"trailing data ({trailing} bytes) after the item")

    def _item(self, major: int, info: int) -> _Open | None:
        """Skip one item's head (and a string's content); return the container it opens."""
        self.items += 1
        if self.items > MAX_CBOR_ITEMS:
            raise DccEncodingError(f"{self.what} has more than {MAX_CBOR_ITEMS} CBOR items")
        self._check_chunk(major, info)
        argument = self._argument(info)
        if argument is None:
            if major not in (_BYTES, _TEXT, _ARRAY, _MAP):
                raise self._malformed(f"indefinite length on major type {major}")
            return _Open(major, _INDEFINITE)
        if major in (_BYTES, _TEXT):
            if argument > len(self.data) - self.pos:
                raise self._malformed("truncated string")
            self.pos += argument
        elif major in (_ARRAY, _MAP):
            count = 2 * argument if major == _MAP else argument
            if count > len(self.data) - self.pos:
                left = len(self.data) - self.pos
                raise self._malformed(f"truncated, {count} items announced in {left} bytes")
            return _Open(major, count) if count else None
        elif major == _TAG:
            self._check_tag(argument)
            return _Open(_TAG, 1)
        elif major == _SIMPLE and info <= 24 and info not in _FALSE_TRUE_NULL:
            raise DccEncodingError(
                f"{self.what} has CBOR simple value {argument} at byte {self.start}; "
                "a DCC has only false, true and null"
            )
        return None

    def _argument(self, info: int) -> int | None:
        if info < 24:
            return info
        if info == 31:
            return None
        if info > 27:
            raise self._malformed(f"reserved additional information {info}")
        end = self.pos + (1 << (info - 24))
        if end > len(self.data):
            raise self._malformed("truncated")
        value = int.from_bytes(self.data[self.pos : end], "big")
        self.pos = end
        return value

    def _check_chunk(self, major: int, info: int) -> None:
        """Inside an indefinite-length string only definite strings of its type may appear."""
        inside = self.stack[-1].major if self.stack else None
        if inside in (_BYTES, _TEXT) and (major != inside or info == 31):
            raise self._malformed("bad chunk in an indefinite-length string")

    def _check_tag(self, tag: int) -> None:
        if tag in self.outer_tags and all(o.major == _TAG for o in self.stack):
            return
        allowed = (
            f"no tags but {sorted(self.outer_tags)} around the whole {self.what}"
            if self.outer_tags
            else f"a {self.what} without tags"
        )
        raise DccEncodingError(
            f"{self.what} has CBOR tag {tag} at byte {self.start}; a DCC has {allowed}"
        )

    def _push(self, opened: _Open) -> None:
        if len(self.stack) >= MAX_CBOR_DEPTH:
            raise DccEncodingError(
                f"{self.what} nests CBOR deeper than the limit of {MAX_CBOR_DEPTH} levels"
            )
        self.stack.append(opened)

    def _close_indefinite(self) -> None:
        if not self.stack or self.stack[-1].remaining != _INDEFINITE:
            raise self._malformed("unexpected break")
        closed = self.stack.pop()
        if closed.major == _MAP and closed.seen % 2:
            raise self._malformed("map key without a value")

    def _complete(self) -> bool:
        """Count one finished item in the open containers; return whether the outermost is."""
        while self.stack:
            top = self.stack[-1]
            if top.remaining == _INDEFINITE:
                top.seen += 1
                return False
            top.remaining -= 1
            if top.remaining:
                return False
            self.stack.pop()
        return True

    def _malformed(self, problem: str) -> DccEncodingError:
        return DccEncodingError(f"{self.what} is not valid CBOR: {problem} at byte {self.start}")
