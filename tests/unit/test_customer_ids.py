"""Customer ids: what the API takes is a path segment that survives URL resolution, and always an
id the events' contract allows."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from ordersaga.bounds import CUSTOMER_ID_INPUT_PATTERN, CUSTOMER_ID_PATTERN, CustomerIdInput

TAKES = TypeAdapter(CustomerIdInput)


@pytest.mark.parametrize("bad", [".", "..", ".hidden", "-x", "", "a/b", "x" * 65])
def test_ids_that_are_not_path_segments_are_refused(bad: str) -> None:
    # "." and ".." vanish from a URL path: /customers/./orders is /customers/orders (found by
    # the OpenAPI fuzzer through httpx).
    with pytest.raises(ValidationError):
        TAKES.validate_python(bad)


@pytest.mark.parametrize("good", ["c", "cust-1", "a.b", "user@example.org", "tenant:42", "9"])
def test_ordinary_ids_are_taken(good: str) -> None:
    assert TAKES.validate_python(good) == good


@given(st.from_regex(CUSTOMER_ID_INPUT_PATTERN, fullmatch=True))
def test_every_id_the_api_takes_is_one_the_event_contract_allows(customer_id: str) -> None:
    assert re.fullmatch(CUSTOMER_ID_PATTERN, customer_id)
