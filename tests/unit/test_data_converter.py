"""The processes' Temporal data converter (`ordersaga.runtime.DATA_CONVERTER`): the SDK's pydantic
payload converter, whose JSON converter (and its cache of type adapters) is one per process."""

from __future__ import annotations

from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import DataConverter

from ordersaga.domain import Address, Order, OrderItem, SagaInput, SagaPolicy
from ordersaga.runtime import DATA_CONVERTER, PayloadConverter

ORDER = Order(
    order_id="0b6c9a52-6a43-4a1e-9c1e-6d0b1f1f2a10",
    customer_id="cust-1",
    items=[OrderItem(sku="sku-1", quantity=2, unit_price=1250)],
    shipping_address=Address(
        name="A. Customer", line1="1 Main St", city="Lyon", postal_code="69001", country="FR"
    ),
    payment_token="tok_ok",
)


def test_every_payload_converter_of_the_process_shares_one_json_converter() -> None:
    # The worker makes a payload converter per workflow: each must find the adapters cached.
    first, second = PayloadConverter(), PayloadConverter()
    assert first.converters[b"json/plain"] is second.converters[b"json/plain"]
    # The SDK's own makes a JSON converter of its own each time: that is what this class is for.
    sdk = PydanticPayloadConverter()
    assert sdk.converters[b"json/plain"] is not first.converters[b"json/plain"]
    # The same encodings in the same order as the SDK's (the first that accepts a value wins).
    assert list(first.converters) == list(sdk.converters)


def test_a_saga_input_round_trips_and_reads_as_the_default_converter_wrote_it() -> None:
    value = SagaInput(ORDER, SagaPolicy(), 3)
    converter = DATA_CONVERTER.payload_converter
    payloads = converter.to_payloads([value])
    assert converter.from_payloads(payloads, [SagaInput]) == [value]
    # Sagas started before this converter carry payloads the SDK's default one wrote.
    written_before = DataConverter.default.payload_converter.to_payloads([value])
    assert converter.from_payloads(written_before, [SagaInput]) == [value]
