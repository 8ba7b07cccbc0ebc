"""The version floors: what counts as too old, and the one line that says so."""

from __future__ import annotations

import pytest

from ordersaga.versions import (
    NATS_FLOOR,
    POSTGRES_FLOOR,
    TEMPORAL_FLOOR,
    Floor,
    UnsupportedServer,
    parse,
    require,
)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("2.9.10", (2, 9, 10)), ("v1.25.1", (1, 25, 1)), ("16.2 (Debian 16.2-1)", (16, 2)),
     ("13.0", (13, 0)), ("2.10.0-beta.3", (2, 10, 0))],
)  # fmt: skip
def test_parse(text: str, parsed: tuple[int, ...]) -> None:
    assert parse(text) == parsed


@pytest.mark.parametrize(
    ("floor", "old", "new"),
    [(NATS_FLOOR, "2.9.10", "2.10.0"), (POSTGRES_FLOOR, "12.17", "13.0"),
     (TEMPORAL_FLOOR, "1.24.2", "1.25.0")],
)  # fmt: skip
def test_too_old_is_refused_in_one_line_naming_all(floor: Floor, old: str, new: str) -> None:
    with pytest.raises(UnsupportedServer) as refused:
        require(floor, old, "somewhere:1")
    line = str(refused.value)
    assert "\n" not in line
    assert line == (
        f"{floor.server} at somewhere:1 is {old}; ordersaga needs {floor.shown} or newer, "
        f"for {floor.why}"
    )
    require(floor, new, "somewhere:1")  # the floor itself is supported


def test_an_unreadable_version_is_refused() -> None:
    with pytest.raises(UnsupportedServer, match="unknown version"):
        require(NATS_FLOOR, "", "nats://x:4222")
