"""Stand-ins for one key's state cell and timer, to drive a stateful DoFn's methods directly."""

from __future__ import annotations

from typing import Any


class Cell:
    """A stand-in for one key's ``ReadModifyWriteState`` cell."""

    def __init__(self) -> None:
        self.value: Any = None

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = value

    def clear(self) -> None:
        self.value = None


class Timer:
    """A stand-in for one key's timer: remembers where it was set."""

    def __init__(self) -> None:
        self.at: Any = None

    def set(self, timestamp: Any) -> None:
        self.at = timestamp
