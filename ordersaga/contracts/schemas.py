"""The schema registry: one JSON Schema per event type and version, generated from the models.

`schemas/<type>/<version>.json` in the repository holds each one as committed; the API serves the
same at `/schemas/<type>/<version>` (the `dataschema` of every CloudEvent), and
`ordersaga schemas check` (also a test in `make test`) fails when:
- a committed schema differs from its model (run `ordersaga schemas generate`);
- a version's schema changed in a breaking way (`compat`), in the working tree or in any commit
  of the file's history: such a change is a new version;
- a version has no model any more (stored events of it could no longer be read), or versions
  have a gap;
- a version after the first has no upcaster from the one before, or that upcaster has no golden
  example under `tests/contracts/upcasts/<type>/<from>-to-<to>.json` (the unit tests run each);
- `schemas/asyncapi.json` differs from the AsyncAPI document the registry makes.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ordersaga.contracts import asyncapi, compat, registry

# The repository's root: `schemas/` and `tests/` beside the kernel (a source checkout).
ROOT = Path(__file__).resolve().parents[2]
SCHEMAS_DIR = ROOT / "schemas"
UPCAST_EXAMPLES_DIR = ROOT / "tests" / "contracts" / "upcasts"
ASYNCAPI = "asyncapi.json"


def all_schemas() -> dict[tuple[str, int], dict[str, Any]]:
    return {key: registry.json_schema(model) for key, model in sorted(registry.BY_KEY.items())}


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def schema_file(event_type: str, version: int, root: Path = SCHEMAS_DIR) -> Path:
    return root / event_type / f"{version}.json"


def upcast_example_file(
    event_type: str, from_version: int, root: Path = UPCAST_EXAMPLES_DIR
) -> Path:
    return root / event_type / f"{from_version}-to-{from_version + 1}.json"


def committed(root: Path = SCHEMAS_DIR) -> dict[tuple[str, int], Path]:
    """The schema files in `root`: (type, version) -> path."""
    found: dict[tuple[str, int], Path] = {}
    for path in sorted(root.glob("order.*/*.json")):
        if path.stem.isdigit():
            found[(path.parent.name, int(path.stem))] = path
    return found


def generate(root: Path = SCHEMAS_DIR) -> list[Path]:
    """Write every schema (and the AsyncAPI document) whose file is missing or differs; returns
    the files written. It does not judge: `check` says whether the change is allowed."""
    wanted = {schema_file(t, v, root): d for (t, v), d in all_schemas().items()}
    # Last: when an example no longer fits its model, the schemas are written all the same.
    wanted[root / ASYNCAPI] = {}
    written = []
    for path, document in wanted.items():
        text = render(document or asyncapi.document())
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(
    root: Path = SCHEMAS_DIR, examples: Path = UPCAST_EXAMPLES_DIR, history: bool = True
) -> Report:
    """Everything `ordersaga schemas check` asks of the registry (see the module's docstring)."""
    report = Report()
    generated = all_schemas()
    files = committed(root)

    for key in sorted(set(files) - set(generated)):
        report.problems.append(
            f"{files[key].relative_to(root.parent)}: no model of {key[0]} version {key[1]} any "
            "more; stored events of that version could no longer be read (keep the model)"
        )
    for (event_type, version), document in generated.items():
        path = schema_file(event_type, version, root)
        shown = path.relative_to(root.parent)
        if not path.exists():
            report.problems.append(f"{shown}: missing; run `ordersaga schemas generate`")
            continue
        before = json.loads(path.read_text())
        if before == document:
            continue
        changes = compat.compare(before, document)
        breaks = compat.breaking(changes)
        if breaks:
            report.problems.append(
                f"{shown}: the model changed version {version} of {event_type} in a way that "
                "breaks its consumers; keep this version as it is and add version "
                f"{max(v for t, v in generated if t == event_type) + 1} with an upcaster:\n"
                + "\n".join(f"    {c}" for c in breaks)
            )
        else:
            report.problems.append(
                f"{shown}: differs from its model (an additive change: "
                + "; ".join(f"{c.path} {c.what}" for c in changes or [])
                + "); run `ordersaga schemas generate`"
            )

    types = sorted({t for t, _ in generated})
    for event_type in types:
        versions = sorted(v for t, v in generated if t == event_type)
        if versions != list(range(1, len(versions) + 1)):
            report.problems.append(f"{event_type}: versions {versions} are not 1, 2, ... in turn")
        for version in versions[1:]:
            if (event_type, version - 1) not in registry.UPCASTS:
                report.problems.append(
                    f"{event_type} version {version}: no upcaster from version {version - 1} "
                    "(registry.UPCASTS)"
                )
            elif not (golden := upcast_example_file(event_type, version - 1, examples)).exists():
                report.problems.append(
                    f"{event_type} version {version}: the upcaster from version {version - 1} "
                    f"has no golden example at {os.path.relpath(golden, ROOT)} "
                    '({"from": <data of the old version>, "to": <what it becomes>})'
                )

    path = root / ASYNCAPI
    try:
        expected = asyncapi.document()
    except ValueError as error:  # an example that no longer fits its model
        report.problems.append(
            f"the AsyncAPI document cannot be made: ordersaga/contracts/examples.py builds no "
            f"valid payload: {error}"
        )
    else:
        if not path.exists() or json.loads(path.read_text()) != expected:
            report.problems.append(
                f"{path.relative_to(root.parent)}: missing or stale; "
                "run `ordersaga schemas generate`"
            )

    if history:
        _check_history(root, report)
    return report


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _check_history(root: Path, report: Report) -> None:
    """Every commit that changed a committed schema changed it compatibly."""
    repo = root.parent
    if _git(repo, "rev-parse", "--is-inside-work-tree") is None:
        report.notes.append("not a git checkout: the schemas' history was not checked")
        return
    for (event_type, version), path in committed(root).items():
        relative = path.relative_to(repo).as_posix()
        log = _git(repo, "log", "--format=%H", "--", relative)
        commits = list(reversed((log or "").split()))
        texts = [(c, _git(repo, "show", f"{c}:{relative}")) for c in commits]
        revisions = [(c, json.loads(t)) for c, t in texts if t]
        for (_, before), (commit, after) in itertools.pairwise(revisions):
            breaks = compat.breaking(compat.compare(before, after))
            if breaks:
                report.problems.append(
                    f"{relative}: commit {commit[:10]} changed version {version} of "
                    f"{event_type} in a way that breaks its consumers:\n"
                    + "\n".join(f"    {c}" for c in breaks)
                )
