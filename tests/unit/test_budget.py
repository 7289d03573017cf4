from __future__ import annotations

import math

import pytest

from services.router.budget import BudgetPlan, Candidate, context_budget, fit_chunks


def _c(key: str, score: float, tokens: int) -> Candidate[str]:
    return Candidate(key=key, score=score, tokens=tokens)


def _keys(cands: list[Candidate[str]]) -> list[str]:
    return [c.key for c in cands]


def test_everything_fits() -> None:
    cands = [_c("a", 0.9, 100), _c("b", 0.8, 100), _c("c", 0.7, 100)]
    plan = fit_chunks(200, cands, budget_tokens=500)
    assert plan == BudgetPlan(kept=cands, dropped=[], prompt_tokens=500, budget_tokens=500)
    assert plan.fits


def test_no_candidates() -> None:
    plan: BudgetPlan[str] = fit_chunks(50, [], budget_tokens=100)
    assert plan == BudgetPlan(kept=[], dropped=[], prompt_tokens=50, budget_tokens=100)


def test_drops_lowest_scored_first() -> None:
    cands = [_c("a", 0.9, 100), _c("b", 0.5, 100), _c("c", 0.7, 100), _c("d", 0.6, 100)]
    plan = fit_chunks(100, cands, budget_tokens=320)
    # 100 + 400 = 500 > 320: drop b (0.5), then d (0.6) -> 300.
    assert _keys(plan.kept) == ["a", "c"]
    assert _keys(plan.dropped) == ["b", "d"]
    assert plan.prompt_tokens == 300
    assert plan.fits


def test_stops_dropping_as_soon_as_it_fits() -> None:
    cands = [_c("a", 0.9, 100), _c("b", 0.1, 10), _c("c", 0.2, 100)]
    plan = fit_chunks(0, cands, budget_tokens=200)
    # 210 > 200: dropping b (lowest) is enough.
    assert _keys(plan.kept) == ["a", "c"]
    assert _keys(plan.dropped) == ["b"]
    assert plan.prompt_tokens == 200


def test_ties_drop_the_later_one() -> None:
    cands = [_c("a", 0.5, 100), _c("b", 0.9, 100), _c("c", 0.5, 100), _c("d", 0.5, 100)]
    plan = fit_chunks(0, cands, budget_tokens=250)
    assert _keys(plan.dropped) == ["c", "d"]
    assert _keys(plan.kept) == ["a", "b"]


def test_kept_order_is_the_original_order_not_score_order() -> None:
    cands = [_c("low-first", 0.2, 10), _c("high", 0.9, 10), _c("mid", 0.5, 10), _c("lowest", 0.1, 10)]
    plan = fit_chunks(0, cands, budget_tokens=30)
    assert _keys(plan.kept) == ["low-first", "high", "mid"]
    assert _keys(plan.dropped) == ["lowest"]


def test_dropped_chunks_are_not_readded() -> None:
    # Dropping small low-scored chunks first; when the big one finally goes there would be room
    # for them again, but the rule is "drop lowest-scored first until it fits", nothing re-added.
    cands = [_c("best", 0.9, 50), _c("big", 0.3, 500), _c("small1", 0.2, 10), _c("small2", 0.1, 10)]
    plan = fit_chunks(0, cands, budget_tokens=100)
    assert _keys(plan.kept) == ["best"]
    assert _keys(plan.dropped) == ["big", "small1", "small2"]
    assert plan.prompt_tokens == 50


def test_exact_fit_is_kept() -> None:
    cands = [_c("a", 0.9, 60), _c("b", 0.8, 40)]
    plan = fit_chunks(100, cands, budget_tokens=200)
    assert _keys(plan.kept) == ["a", "b"]
    assert plan.prompt_tokens == 200


def test_base_alone_fills_budget_keeps_none() -> None:
    cands = [_c("a", 0.9, 1), _c("b", 0.8, 1)]
    plan = fit_chunks(100, cands, budget_tokens=100)
    assert plan.kept == []
    assert _keys(plan.dropped) == ["a", "b"]
    assert plan.prompt_tokens == 100
    assert plan.fits


def test_base_too_large_keeps_none() -> None:
    cands = [_c("a", 0.9, 10), _c("b", 0.8, 10)]
    plan = fit_chunks(150, cands, budget_tokens=100)
    assert plan.kept == []
    assert plan.dropped == cands
    assert plan.prompt_tokens == 150
    assert plan.budget_tokens == 100
    assert not plan.fits


def test_nan_score_is_dropped_first() -> None:
    cands = [_c("nan", math.nan, 10), _c("low", 0.0, 10), _c("high", 1.0, 10)]
    plan = fit_chunks(0, cands, budget_tokens=20)
    assert _keys(plan.dropped) == ["nan"]


def test_negative_scores_ok() -> None:
    # Distance-like scores can be negative; still "lowest first".
    cands = [_c("a", -0.1, 10), _c("b", -0.9, 10), _c("c", 0.3, 10)]
    plan = fit_chunks(0, cands, budget_tokens=20)
    assert _keys(plan.dropped) == ["b"]


def test_accepts_any_sequence_and_returns_lists() -> None:
    cands = (_c("a", 0.9, 10), _c("b", 0.8, 10))
    plan = fit_chunks(0, cands, budget_tokens=100)
    assert isinstance(plan.kept, list)
    assert _keys(plan.kept) == ["a", "b"]


@pytest.mark.parametrize(("base", "tokens"), [(-1, 1), (0, -1)])
def test_fit_chunks_rejects_negative_counts(base: int, tokens: int) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        fit_chunks(base, [_c("a", 0.5, tokens)], budget_tokens=100)


def test_context_budget() -> None:
    assert context_budget(8192, 512) == 8192 - 512 - 16
    assert context_budget(2048, 256, safety_margin=0) == 1792
    assert context_budget(100, 83) == 1


@pytest.mark.parametrize(
    ("ctx", "new", "margin", "message"),
    [
        (512, 512, 16, "no room for a prompt"),
        (512, 496, 16, "no room for a prompt"),
        (512, 1000, 0, "no room for a prompt"),
        (0, 0, 0, "max_context_tokens must be > 0"),
        (512, -1, 16, "max_new_tokens must be >= 0"),
        (512, 10, -1, "safety_margin must be >= 0"),
    ],
)
def test_context_budget_errors(ctx: int, new: int, margin: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        context_budget(ctx, new, safety_margin=margin)
