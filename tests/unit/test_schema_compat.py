"""The compatibility rules of one version's schema (`ordersaga.contracts.compat`), one test per
rule, and `schemas.check` on a registry folder of its own: stale, breaking, history, upcasters."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ordersaga.contracts import compat, registry, schemas

Schema = dict[str, Any]

# `order.placed` version 2 as pydantic makes it: nested models behind `$ref`s, optionals as anyOf.
BASE: Schema = registry.json_schema(registry.model_for("order.placed", 2))
ENUMERATED: Schema = registry.json_schema(registry.model_for("order.cancelled", 1))


def changed(base: Schema, edit: Callable[[Schema], object]) -> Schema:
    new = copy.deepcopy(base)
    edit(new)
    return new


def kinds(old: Schema, new: Schema) -> set[str]:
    return {c.kind for c in compat.compare(old, new)}


def address(s: Schema) -> Schema:
    found: Schema = s["$defs"]["ShippingAddress"]
    return found


BREAKING: dict[str, tuple[Schema, Callable[[Schema], object]]] = {
    "property removed": (BASE, lambda s: s["properties"].pop("customer_id")),
    "property renamed": (
        BASE,
        lambda s: s["properties"].__setitem__("items_", s["properties"].pop("items")),
    ),
    "required property added": (
        BASE,
        lambda s: (
            s["properties"].__setitem__("channel", {"type": "string"}),
            s["required"].append("channel"),
        ),
    ),
    "required made optional": (BASE, lambda s: s["required"].remove("customer_id")),
    "optional made required": (BASE, lambda s: address(s)["required"].append("line2")),
    "type changed": (BASE, lambda s: s["properties"]["order_id"].__setitem__("type", "integer")),
    "nullable added": (
        BASE,
        lambda s: s["properties"].__setitem__(
            "order_id", {"anyOf": [s["properties"]["order_id"], {"type": "null"}]}
        ),
    ),
    "enum value added": (ENUMERATED, lambda s: s["$defs"]["CancelReason"]["enum"].append("fraud")),
    "enum value removed": (ENUMERATED, lambda s: s["$defs"]["CancelReason"]["enum"].pop()),
    "bound narrowed": (BASE, lambda s: s["properties"]["items"].__setitem__("maxItems", 10)),
    "bound widened": (BASE, lambda s: s["$defs"]["Price"]["properties"]["amount"].pop("maximum")),
    "pattern changed": (
        BASE,
        lambda s: address(s)["properties"]["country"].__setitem__("pattern", "^[A-Z]{3}$"),
    ),
    "length in a nested model": (
        BASE,
        lambda s: address(s)["properties"]["city"].__setitem__("maxLength", 50),
    ),
    "closed to unknown properties": (BASE, lambda s: s.__setitem__("additionalProperties", False)),
    "unknown keyword": (BASE, lambda s: s["properties"]["order_id"].__setitem__("x-new", 1)),
}


@pytest.mark.parametrize("rule", sorted(BREAKING))
def test_a_change_that_breaks_consumers_or_stored_events_is_breaking(rule: str) -> None:
    base, edit = BREAKING[rule]
    assert "breaking" in kinds(base, changed(base, edit))


def test_a_new_optional_property_is_additive() -> None:
    new = changed(
        BASE,
        lambda s: s["properties"].__setitem__(
            "gift_note", {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
        ),
    )
    assert [(c.kind, c.path) for c in compat.compare(BASE, new)] == [
        ("additive", "/properties/gift_note")
    ]


def test_documentation_changes_nothing() -> None:
    def reword(s: Schema) -> None:
        s["description"] = "other words"
        s["title"] = "another title"
        address(s)["properties"]["city"]["examples"] = ["London"]

    assert compat.compare(BASE, changed(BASE, reword)) == []


def test_the_same_schema_has_no_changes_and_a_new_version_is_not_compatible() -> None:
    assert compat.compare(BASE, copy.deepcopy(BASE)) == []
    v1 = registry.json_schema(registry.model_for("order.placed", 1))
    # Why order.placed needed a version 2: currency moved into every amount.
    found = {(c.path, c.what) for c in compat.breaking(compat.compare(v1, BASE))}
    assert ("/properties/currency", "property removed") in found
    assert any(p == "/properties/total" for p, _ in found)


# -- the check, on a registry folder of its own -----------------------------------------------


@pytest.fixture
def registry_copy(tmp_path: Path) -> Path:
    """`schemas/` as committed, in a git repository of its own with one commit."""
    root = tmp_path / "schemas"
    shutil.copytree(schemas.SCHEMAS_DIR, root, ignore=shutil.ignore_patterns("vendor"))
    git(tmp_path, "init", "-q")
    commit(tmp_path, "the registry as committed")
    return root


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def edit_file(path: Path, edit: Callable[[Schema], object]) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(schemas.render(document))


def test_the_check_passes_on_the_committed_registry(registry_copy: Path) -> None:
    report = schemas.check(registry_copy)
    assert report.ok, report.problems


def test_a_breaking_difference_from_the_model_is_refused(registry_copy: Path) -> None:
    # The committed file says what consumers rely on; a model that no longer matches it in a
    # breaking way must become a new version.
    edit_file(registry_copy / "order.confirmed" / "1.json", lambda s: s["required"].pop())
    report = schemas.check(registry_copy, history=False)
    [problem] = report.problems
    assert "breaks its consumers" in problem and "add version 2" in problem


def test_an_additive_difference_asks_for_the_schema_to_be_generated(registry_copy: Path) -> None:
    # As if the model had just gained the optional `detail`.
    edit_file(registry_copy / "order.cancelled" / "1.json", lambda s: s["properties"].pop("detail"))
    [problem] = schemas.check(registry_copy, history=False).problems
    assert "an additive change" in problem and "schemas generate" in problem


def test_a_breaking_change_committed_with_its_regenerated_schema_is_caught_in_history(
    registry_copy: Path,
) -> None:
    path = registry_copy / "order.cancelled" / "1.json"
    edit_file(path, lambda s: s["$defs"]["CancelReason"]["enum"].append("fraud"))
    commit(registry_copy.parent, "a new reason, in place")
    edit_file(path, lambda s: s["$defs"]["CancelReason"]["enum"].remove("fraud"))  # as the model
    report = schemas.check(registry_copy)
    assert any("commit" in p and "enum values added" in p for p in report.problems), report


def test_a_removed_version_and_a_stale_asyncapi_document_are_refused(
    registry_copy: Path,
) -> None:
    extra = registry_copy / "order.confirmed" / "2.json"
    extra.write_text((registry_copy / "order.confirmed" / "1.json").read_text())
    edit_file(registry_copy / "asyncapi.json", lambda d: d["info"].__setitem__("version", "0"))
    problems = schemas.check(registry_copy, history=False).problems
    assert any("no model of order.confirmed version 2" in p for p in problems)
    assert any("asyncapi.json: missing or stale" in p for p in problems)


def test_a_new_version_needs_its_upcaster_and_its_golden_example(
    registry_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "no-examples"
    problems = schemas.check(registry_copy, empty, history=False).problems
    assert any("has no golden example" in p for p in problems)
    monkeypatch.delitem(registry.UPCASTS, ("order.placed", 1))
    problems = schemas.check(registry_copy, history=False).problems
    assert any("no upcaster from version 1" in p for p in problems)
