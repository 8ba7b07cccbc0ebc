"""Input types every entry point validates with: the domain's limits (`ordersaga.domain`) as
pydantic types, so the API's documented schema and what the rest of the system can carry agree.

Text never holds a NUL or an unpaired surrogate (Postgres's jsonb and text refuse both, which
turned an accepted order into a 500 or a dead letter); codes are checked against ISO lists from
`pycountry`, not a hand-typed list.
"""

from __future__ import annotations

import re
from typing import Annotated

import pycountry
from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo

from ordersaga.domain import (
    MAX_ITEMS,
    MAX_ORDER_TOTAL,
    MAX_QUANTITY,
    MAX_STOCK,
    MAX_UNIT_PRICE,
)

__all__ = [
    "CUSTOMER_ID_INPUT_PATTERN",
    "CUSTOMER_ID_PATTERN",
    "MAX_ITEMS",
    "MAX_ORDER_TOTAL",
    "STORED",
    "AddressLine",
    "City",
    "CountryCode",
    "CurrencyCode",
    "CustomerId",
    "CustomerIdInput",
    "IsoCountry",
    "IsoCurrency",
    "IsoDay",
    "Money",
    "Name",
    "PostalCode",
    "Quantity",
    "Sku",
    "Stock",
    "Storable",
    "UnitPrice",
]

# ISO 3166 reserves ZZ for user assignment; the participants' test mode uses it for "no carrier
# ships there" (README), so it is accepted beside the assigned codes.
TEST_MODE_COUNTRY = "ZZ"


def _storable(value: str | None) -> str | None:
    if value is None:
        return None
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    if any("\ud800" <= c <= "\udfff" for c in value):
        raise ValueError("must not contain an unpaired surrogate")
    return value


def _not_bool(value: object) -> object:
    # JSON's true and false are not numbers; pydantic's lax mode would read them as 1 and 0.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


# Validation context of a fact read back from the store: it was checked against today's code
# lists when it was written. A later pycountry that drops a code (a country renamed, a currency
# withdrawn) must not make stored events unreadable, so reads check only the schema's pattern.
STORED = {"stored": True}


def _stored(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("stored"))


def _country(value: str, info: ValidationInfo) -> str:
    if _stored(info):
        return value
    if value != TEST_MODE_COUNTRY and pycountry.countries.get(alpha_2=value) is None:
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return value


def _currency(value: str, info: ValidationInfo) -> str:
    if _stored(info):
        return value
    if pycountry.currencies.get(alpha_3=value) is None:
        raise ValueError(f"{value!r} is not an ISO 4217 currency code")
    return value


# A customer's id is the client's own identifier, and part of a URL path
# (`/customers/{customer_id}/orders`): letters, digits and `._:@-`, never a `/`. This is the id as
# events carry it (order.placed's contract, versions 1 and 2).
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,64}$"
# The ids the API takes: they also start with a letter or a digit, so that none is `.` or `..`,
# path segments that URLs resolve away (`/customers/./orders` is `/customers/orders`). Narrower
# than the events' pattern, so every id placed is one the event contract allows.
CUSTOMER_ID_INPUT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$"

# For every text field: `Annotated[str, Field(max_length=...), Storable]`.
Storable = AfterValidator(_storable)

# The code lists go into the API's schema as enums, so its document says exactly what passes.
COUNTRIES = sorted({c.alpha_2 for c in pycountry.countries} | {TEST_MODE_COUNTRY})
CURRENCIES = sorted(c.alpha_3 for c in pycountry.currencies)

CountryCode = Annotated[
    str,
    Field(
        description="ISO 3166-1 alpha-2 code (ZZ: test mode).",
        json_schema_extra={"enum": COUNTRIES},
    ),
    AfterValidator(_country),
]
CurrencyCode = Annotated[
    str,
    Field(description="ISO 4217 code.", json_schema_extra={"enum": CURRENCIES}),
    AfterValidator(_currency),
]
# The same checks, with a schema that names the standard instead of listing today's codes: the
# event contracts (`schemas/`) stay the same when pycountry learns a new code.
IsoCountry = Annotated[
    str,
    Field(
        pattern=r"^[A-Z]{2}$",
        description="ISO 3166-1 alpha-2 code (ZZ: test mode, no carrier ships there).",
    ),
    AfterValidator(_country),
]
IsoCurrency = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code."), AfterValidator(_currency)
]
Whole = BeforeValidator(_not_bool)


def _iso_day(value: object) -> object:
    # A day is YYYY-MM-DD, as the document says; pydantic's lax mode would also read "0" or a
    # number as a Unix timestamp.
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is None:
        raise ValueError("must be a day as YYYY-MM-DD")
    return value


IsoDay = BeforeValidator(_iso_day)
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY), Whole]
UnitPrice = Annotated[
    int,
    Field(ge=0, le=MAX_UNIT_PRICE, description="Price of one unit in minor units (cents)."),
    Whole,
]
Stock = Annotated[int, Field(ge=0, le=MAX_STOCK), Whole]
Money = Annotated[int, Field(ge=0, le=MAX_ORDER_TOTAL), Whole]

# Text of an order, the same in the API's requests and in the events that carry the order.
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Name = Annotated[str, Field(min_length=1, max_length=200), Storable]
AddressLine = Annotated[str | None, Field(max_length=200), Storable]
City = Annotated[str, Field(min_length=1, max_length=100), Storable]
PostalCode = Annotated[str, Field(min_length=1, max_length=20), Storable]
CustomerId = Annotated[
    str, Field(pattern=CUSTOMER_ID_PATTERN, description="Your own id of the customer.")
]
CustomerIdInput = Annotated[
    str, Field(pattern=CUSTOMER_ID_INPUT_PATTERN, description="Your own id of the customer.")
]
