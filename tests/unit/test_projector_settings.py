from __future__ import annotations

import pytest
from pydantic import ValidationError

from ordersaga.settings import ProjectorSettings


def test_a_linger_as_long_as_the_ack_wait_is_refused() -> None:
    assert ProjectorSettings(linger_s=0.05, ack_wait_s=15).linger_s == 0.05
    with pytest.raises(ValidationError, match="linger_s"):
        ProjectorSettings(linger_s=15, ack_wait_s=15)
