"""The one context-manager shape every lab part shares: entering starts it, leaving stops it."""

from __future__ import annotations

from types import TracebackType

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Self


class StartStop:
    def start(self) -> Self:
        return self

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
