"""Issue 13 on the default backend (Milvus Lite, owned by the router): under a steady load from
two tenants, SIGKILL and a 20 s SIGSTOP of llm, of its vLLM engine process, of embed, of
guardrails and of the router, one at a time on one mesh. After each, every acknowledged document
is searchable whole (its acknowledged chunks, that version's text, nothing of another version),
every call ended within its deadline with OK, UNAVAILABLE, DEADLINE_EXCEEDED or
RESOURCE_EXHAUSTED, GetCapacity shows no session left, no process outlived its place under the
supervisor, and every service (and every router dependency entry) is SERVING again."""

from __future__ import annotations

import pytest

from tests.chaos.faults import LITE_FAULTS, Fault
from tests.chaos.harness import Chaos

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


# Bounds only: the first includes starting the mesh; each round bounds all of its own waits.
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("fault", LITE_FAULTS, ids=lambda f: f.id)
async def test_fault_loses_leaks_and_hangs_nothing(lite_chaos: Chaos, fault: Fault) -> None:
    report = await lite_chaos.round(fault)
    print(report.describe())  # with -rP: what each round did, passed or not
    assert not report.findings, report.describe()
