"""Several questions at once with the asyncio client: each answer streams into its own buffer,
then they print with their sources. Answers beyond the router's session limit are refused with
RESOURCE_EXHAUSTED and retried after the delay the router asks for (RetryInfo).

    .venv/bin/python examples/async_chat.py ["question" ...]

Settings as examples/ask.py (FORGE_ROUTER, FORGE_API_KEY or the local admin key, FORGE_ROUTER_CA).
Run examples/ask.py first so that the `examples` collection holds README.md.
"""

from __future__ import annotations

import asyncio
import os
import sys

from forge_client import AsyncClient, ForgeError, RetryPolicy, local_admin_key

QUESTIONS = (
    "What does `forge up` start?",
    "How are chat sessions admitted?",
    "Which metrics does the router export?",
)


async def answer(forge: AsyncClient, question: str) -> str:
    stream = forge.chat(question, collection="examples", max_tokens=96, temperature=0)
    text = await stream.text()
    sources = ", ".join(sorted({c.document_id for c in stream.summary.citations})) or "no sources"
    return f"Q: {question}\nA: {text.strip()}\n   ({sources})"


def retrying(error: ForgeError, attempt: int, wait_s: float) -> None:
    print(f"attempt {attempt}: {error}; again in {wait_s:.1f} s", file=sys.stderr)


async def main(questions: list[str]) -> int:
    api_key = os.environ.get("FORGE_API_KEY") or local_admin_key()
    ca = os.environ.get("FORGE_ROUTER_CA")
    policy = RetryPolicy(max_attempts=6)
    async with AsyncClient(api_key=api_key, tls=ca or False, retry=policy, on_retry=retrying) as forge:
        try:
            answers = await asyncio.gather(*(answer(forge, q) for q in questions))
        except ForgeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    print("\n\n".join(answers))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:] or list(QUESTIONS))))
