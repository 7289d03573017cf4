"""Fit retrieved chunks into the LLM's context budget. Pure functions, no I/O.

Rule, kept deliberately simple: **drop the lowest-scored chunks first until the prompt fits**
(on equal scores the later one in retrieval order goes first). Once a chunk is dropped it is
never re-added, even if a big chunk dropped afterwards would have made room for it; so the kept
set is always "the best-scored chunks", never a knapsack-optimal packing with holes in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass(frozen=True)
class Candidate(Generic[K]):
    """A retrieved chunk that may go into the prompt."""

    key: K  # the caller's handle (e.g. a search hit)
    score: float
    tokens: int  # LLM tokens of this chunk as it will appear in the prompt (incl. its header)


@dataclass(frozen=True)
class BudgetPlan(Generic[K]):
    """Which candidates fit. ``kept`` and ``dropped`` keep the original (retrieval) order."""

    kept: list[Candidate[K]]
    dropped: list[Candidate[K]]
    prompt_tokens: int  # base_tokens + sum of kept tokens
    budget_tokens: int

    @property
    def fits(self) -> bool:
        """Whether the prompt (base + kept chunks) is within budget; False only if the base is not."""
        return self.prompt_tokens <= self.budget_tokens


def context_budget(max_context_tokens: int, max_new_tokens: int, safety_margin: int = 16) -> int:
    """Tokens available for the whole prompt: context window minus generation and a margin.

    Raises ValueError if an argument is negative or nothing is left for the prompt.
    """
    if max_context_tokens <= 0:
        raise ValueError(f"max_context_tokens must be > 0, got {max_context_tokens}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if safety_margin < 0:
        raise ValueError(f"safety_margin must be >= 0, got {safety_margin}")
    budget = max_context_tokens - max_new_tokens - safety_margin
    if budget <= 0:
        raise ValueError(
            f"no room for a prompt: context {max_context_tokens} tokens - max_new_tokens "
            f"{max_new_tokens} - safety margin {safety_margin} = {budget}"
        )
    return budget


def fit_chunks(base_tokens: int, candidates: Sequence[Candidate[K]], budget_tokens: int) -> BudgetPlan[K]:
    """Keep as many candidates as fit in ``budget_tokens``, dropping the lowest-scored first.

    ``base_tokens`` is the prompt without any chunk (system text, question, template). If even
    that exceeds the budget, no chunk is kept and ``prompt_tokens`` is ``base_tokens`` (> budget):
    the caller decides what to do (the router rejects the question as too long).
    """
    if base_tokens < 0:
        raise ValueError(f"base_tokens must be >= 0, got {base_tokens}")
    for c in candidates:
        if c.tokens < 0:
            raise ValueError(f"candidate tokens must be >= 0, got {c.tokens} for {c.key!r}")

    if base_tokens > budget_tokens:
        return BudgetPlan(
            kept=[], dropped=list(candidates), prompt_tokens=base_tokens, budget_tokens=budget_tokens
        )

    total = base_tokens + sum(c.tokens for c in candidates)

    # Drop order: lowest score first (a NaN score counts as the lowest); among equal scores, the
    # later one in retrieval order first.
    def drop_key(i: int) -> tuple[bool, float, int]:
        score = candidates[i].score
        return (not math.isnan(score), 0.0 if math.isnan(score) else score, -i)

    drop_order = sorted(range(len(candidates)), key=drop_key)
    dropped_idx: set[int] = set()
    for i in drop_order:
        if total <= budget_tokens:
            break
        dropped_idx.add(i)
        total -= candidates[i].tokens

    kept = [c for i, c in enumerate(candidates) if i not in dropped_idx]
    dropped = [c for i, c in enumerate(candidates) if i in dropped_idx]
    return BudgetPlan(kept=kept, dropped=dropped, prompt_tokens=total, budget_tokens=budget_tokens)
