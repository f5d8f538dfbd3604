"""Value semantics for slotted classes, without ``dataclasses``.

Creating a ``@dataclass`` class costs about a millisecond at import (it
generates and compiles methods), and a rewrite imports a dozen of them before
it reads a byte. A :class:`Record` subclass lists its fields in ``__slots__``
and writes its ``__init__``; it gets ``==`` and ``repr`` by those fields, and
is unhashable, as a mutable dataclass is. A :class:`FrozenRecord` is the
frozen dataclass's equivalent: set once in ``__init__``, then immutable and
hashed by its fields.
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


class FrozenRecord(Record):
    __slots__ = ()

    def _freeze(self, **fields: Any) -> None:
        """Set every field by name (the only assignment a frozen record takes)."""
        assert fields.keys() == set(self.__slots__), "every field, once"
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __hash__(self) -> int:  # type: ignore[override]  # Record's is None: unhashable
        return hash(self._values())

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Copied and pickled through __init__, by field name (__setattr__ refuses).
        return (_remake, (type(self), dict(zip(self.__slots__, self._values(), strict=True))))


def _remake(cls: type[FrozenRecord], fields: dict[str, Any]) -> FrozenRecord:
    return cls(**fields)
