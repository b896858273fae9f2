"""Option helpers shared by the commands."""

from __future__ import annotations

from ..errors import S2SDError


def int_list(value: str | None, option: str) -> list[int] | None:
    """Parse ``"512,1024"`` into ``[512, 1024]``; ``None`` stays ``None``."""
    if value is None:
        return None
    try:
        return [int(part) for part in value.replace(" ", "").split(",") if part]
    except ValueError:
        raise S2SDError(f"{option} takes comma-separated whole numbers, e.g. 512,1024; got {value!r}") from None
