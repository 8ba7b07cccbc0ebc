"""The event contracts: what other teams build against.

- `payloads`: one frozen pydantic model per event type and schema version, sharing the domain's
  bounds (`ordersaga.bounds`); pure, so the workflow sandbox imports it.
- `registry`: which model is which (type, version), the current version of each type, and the
  upcasters from each old version to the next.
- `schemas`: the JSON Schemas generated from the models, the committed registry under `schemas/`
  and the compatibility rules that `ordersaga schemas check` enforces.
- `asyncapi`: the AsyncAPI 3.0 document of the stream.

This package's `__init__` imports nothing: the workflow imports `payloads` alone, without the
file and schema machinery of the others.
"""
