"""Types of the C extension built from _speedups.c (see flatten.py for how it is used)."""

from typing import Any

class Acc:
    def __init__(self, index: dict[str, int], kinds: bytes, channel: bool, /) -> None: ...
    def take(
        self,
    ) -> tuple[int, bytes, bytes, list[str] | None, list[Any], list[tuple[int, str, Any]]]: ...
    def __len__(self) -> int: ...

def flatten_days(
    data: list[Any], slot: int, stats: Acc, totals: Acc, known_channels: frozenset[str], new_channels: set[str], /
) -> int | None: ...
