"""Whether a change to one version's JSON Schema keeps its consumers safe.

Within one schema version the set of valid events must stay what it was: events stored under the
committed schema must still validate, and a consumer coded against it must accept everything we
publish. The one exception is a property the consumer does not know: readers ignore unknown
properties (the models do, and the contract says so), so a new *optional* property is additive.

Additive (the same version, regenerate its schema):
- a new optional property;
- a change of documentation only: `title`, `description`, `examples`, `default`, `deprecated`,
  `$comment`.

Breaking (a new version, with an upcaster from this one and its golden test):
- a property removed or renamed;
- a new required property, or an optional property made required (stored events lack it), or a
  required one made optional (consumers rely on it);
- another `type`, another `const`, nullable added or removed, alternatives (`anyOf`, `oneOf`)
  changed;
- an enum value added (consumers meet a value they do not handle) or removed (stored events carry
  it);
- any bound changed, narrowed or widened: `minimum`, `maximum`, `minLength`, `maxLength`,
  `minItems`, `maxItems`, `pattern`, `format`, `multipleOf`, `additionalProperties`, ... (a
  narrower bound rejects stored events, a wider one breaks a consumer's assumption: its column
  sizes, its regexes);
- any keyword these rules do not know, changed (when in doubt, it breaks).

The comparison is structural, on the schemas pydantic generates (local `$ref`s into `$defs` are
followed); it never needs the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Schema = dict[str, Any]

# Keywords that document and never change what validates.
ANNOTATIONS = frozenset(
    {"title", "description", "examples", "default", "deprecated", "$comment", "$id", "$schema"}
)
# Keywords the rules below handle themselves.
_STRUCTURE = frozenset({"$ref", "$defs", "properties", "required", "items", "anyOf", "oneOf"})


@dataclass(frozen=True)
class Change:
    kind: Literal["additive", "breaking"]
    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path or '/'}: {self.what}"


def compare(old: Schema, new: Schema) -> list[Change]:
    """Every difference between two versions of one schema, each additive or breaking."""
    changes: list[Change] = []
    _node(_Doc(old), old, _Doc(new), new, "", changes)
    return changes


def breaking(changes: list[Change]) -> list[Change]:
    return [c for c in changes if c.kind == "breaking"]


class _Doc:
    """A schema document, to follow its local references (`#/$defs/Name`)."""

    def __init__(self, root: Schema) -> None:
        self.root = root

    def resolve(self, node: Schema, depth: int = 0) -> Schema:
        ref = node.get("$ref")
        if ref is None:
            return node
        if depth > 32 or not isinstance(ref, str) or not ref.startswith("#/"):
            raise ValueError(f"unsupported $ref {ref!r}: only local references are compared")
        target: Any = self.root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        # Keywords beside a $ref apply too (2020-12): the target's, overridden by the siblings.
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return self.resolve(merged, depth + 1)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _node(od: _Doc, old: Schema, nd: _Doc, new: Schema, path: str, out: list[Change]) -> None:
    old, new = od.resolve(old), nd.resolve(new)

    for key in sorted((set(old) | set(new)) - ANNOTATIONS - _STRUCTURE):
        if key in old and key not in new:
            out.append(Change("breaking", path, f"{key} {_canon(old[key])} removed"))
        elif key not in old:
            out.append(Change("breaking", path, f"{key} {_canon(new[key])} added"))
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            # A keyword whose value is a schema: additionalProperties, propertyNames, ...
            _node(od, old[key], nd, new[key], f"{path}/{key}", out)
        elif key == "enum":
            _enum(old[key], new[key], path, out)
        elif _canon(old[key]) != _canon(new[key]):
            what = f"{key} {_canon(old[key])} -> {_canon(new[key])}"
            out.append(Change("breaking", path, what))

    for key in ("anyOf", "oneOf"):
        _alternatives(od, old.get(key), nd, new.get(key), f"{path}/{key}", out)
    if "items" in old or "items" in new:
        if isinstance(old.get("items"), dict) and isinstance(new.get("items"), dict):
            _node(od, old["items"], nd, new["items"], f"{path}/items", out)
        else:
            out.append(Change("breaking", f"{path}/items", "items changed"))
    _properties(od, old, nd, new, path, out)


def _enum(old: list[Any], new: list[Any], path: str, out: list[Change]) -> None:
    before, after = {_canon(v) for v in old}, {_canon(v) for v in new}
    if after - before:
        what = f"enum values added: {', '.join(sorted(after - before))}"
        out.append(Change("breaking", path, what))
    if before - after:
        what = f"enum values removed: {', '.join(sorted(before - after))}"
        out.append(Change("breaking", path, what))


def _alternatives(od: _Doc, old: Any, nd: _Doc, new: Any, path: str, out: list[Change]) -> None:
    if old is None and new is None:
        return
    if not isinstance(old, list) or not isinstance(new, list) or len(old) != len(new):
        out.append(Change("breaking", path, "alternatives changed (nullable, or another type)"))
        return
    for i, (o, n) in enumerate(zip(old, new, strict=True)):
        _node(od, o, nd, n, f"{path}/{i}", out)


def _properties(od: _Doc, old: Schema, nd: _Doc, new: Schema, path: str, out: list[Change]) -> None:
    before: Schema = old.get("properties", {})
    after: Schema = new.get("properties", {})
    was_required, is_required = set(old.get("required", [])), set(new.get("required", []))
    for name in sorted(set(before) | set(after)):
        where = f"{path}/properties/{name}"
        if name not in after:
            out.append(Change("breaking", where, "property removed"))
        elif name not in before:
            if name in is_required:
                out.append(Change("breaking", where, "required property added"))
            else:
                out.append(Change("additive", where, "optional property added"))
        else:
            if name in was_required and name not in is_required:
                out.append(Change("breaking", where, "required property made optional"))
            if name in is_required and name not in was_required:
                out.append(Change("breaking", where, "optional property made required"))
            _node(od, before[name], nd, after[name], where, out)
    # A required name without a property schema (not generated by pydantic, but possible).
    for name in sorted((is_required - was_required) - set(after)):
        out.append(Change("breaking", f"{path}/required", f"{name!r} required"))
