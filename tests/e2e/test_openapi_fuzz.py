"""The OpenAPI document is the truth: schemathesis, a property-based fuzzer driven by the API's
own `/openapi.json`, runs every check with a fixed seed and a budget, and finds no failure.
It runs as an outsider would run it: the CLI against the test stack's API. `make fuzz` runs
the same for longer (settings in `schemathesis.toml`)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from ordersaga.devstack import DevStack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# The suite's budget; `make fuzz` raises both.
EXAMPLES = os.environ.get("ORDERSAGA_FUZZ_EXAMPLES", "15")
SECONDS = os.environ.get("ORDERSAGA_FUZZ_SECONDS", "120")


# Above the suite's 300 s per test: `make fuzz` runs the fuzzer for 600 s, and pytest-timeout
# stopped it halfway (the stack torn down under it read as "server stopped responding").
@pytest.mark.timeout(int(SECONDS) + 360)
async def test_every_operation_answers_as_documented(stack: DevStack) -> None:
    api = stack.settings.api
    fuzzer = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "schemathesis"), "run",
        f"http://{api.host}:{api.port}/openapi.json",
        "--header", f"Authorization: Bearer {stack.api_key}",
        "--checks", "all", "--seed", "1", "--max-examples", EXAMPLES,
        "--max-time", SECONDS, "--no-color",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(fuzzer.communicate(), int(SECONDS) + 300)  # its own bound
    report = out.decode(errors="replace")
    print(report[report.find("SUMMARY") - 40 :] if "SUMMARY" in report else report[-3000:])
    assert fuzzer.returncode == 0, report[-6000:]
    assert "No issues found" in report or " passed" in report, report[-2000:]
