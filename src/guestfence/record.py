"""Small immutable value objects for the agents' start-up path.

``typing.NamedTuple`` and ``dataclasses`` are the natural tools, but importing
them costs 5-17 ms of CPU on every fencing call (docs/benchmarks.md). These
records give the same behaviour for what we use: keyword construction in the
subclass's typed ``__init__``, equality, hashing, repr and ``_replace``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Self


class Record:
    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _set(self, **fields: object) -> None:
        """For ``__init__`` only: assign every field once."""
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def _replace(self, **changes: Any) -> Self:
        unknown = set(changes) - set(self.__slots__)
        if unknown:
            raise TypeError(f"unknown field(s) {sorted(unknown)} for {type(self).__name__}")
        clone = object.__new__(type(self))
        for name in self.__slots__:
            object.__setattr__(clone, name, changes.get(name, getattr(self, name)))
        return clone
