from __future__ import annotations

import pytest

from services.common.errors import DeadlineExceeded
from services.router.deadline import RESPONSE_MARGIN_S, Deadline


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stages_share_what_is_left_and_generation_gets_the_rest() -> None:
    clock = Clock()
    deadline = Deadline(10.0, clock)
    assert deadline.stage_timeout("rail", 0.3, 5.0) == pytest.approx((10 - RESPONSE_MARGIN_S) * 0.3)
    assert deadline.stage_timeout("rail", 0.3, 1.0) == 1.0  # capped
    clock.now += 4
    assert deadline.rest("generate", 600) == pytest.approx(6 - RESPONSE_MARGIN_S)


def test_without_a_caller_deadline_stages_get_their_caps() -> None:
    deadline = Deadline(None, Clock())
    assert not deadline.bounded
    assert deadline.stage_timeout("rail", 0.3, 5.0) == 5.0
    assert deadline.rest("generate", 600) == 600


def test_an_expired_deadline_names_the_stage_it_stopped() -> None:
    clock = Clock()
    deadline = Deadline(1.0, clock)
    clock.now += 1.0
    with pytest.raises(DeadlineExceeded, match="before the Milvus search"):
        deadline.stage_timeout("the Milvus search", 0.3, 5.0)
