"""Value semantics for slotted classes, without ``dataclasses``.

Creating a ``@dataclass`` class costs about a millisecond at import (it
generates and compiles methods), and a rewrite imports a dozen of them before
it reads a byte. A :class:`Record` subclass lists its fields in ``__slots__``
and writes its ``__init__``; it gets ``==`` and ``repr`` by those fields, and
is unhashable, as a mutable dataclass is.
"""

from __future__ import annotations

from typing import Any


class Record:
    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
