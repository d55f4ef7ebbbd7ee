"""Name -> factory registries. They drive the CLI's choices, its help and the contract tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from interplab.errors import UserError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered mapping from names to objects that refuses duplicates and explains misses."""

    def __init__(self, kind: str):
        self.kind = kind  # what the entries are, for messages: "subject", "experiment", ...
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator: `@REG.register("name", help="one line")`."""

        def add(obj: T) -> T:
            self.add(name, obj, help)
            return obj

        return add

    def add(self, name: str, obj: T, help: str = "") -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = obj
        self._help[name] = help or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UserError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"choose one of: {', '.join(self._entries)}"
            )
        return self._entries[name]

    def help(self, name: str) -> str:
        return self._help[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
