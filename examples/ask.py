"""Ask Forge about its own README: ingest README.md, stream an answer, print the cited sources.

    .venv/bin/python examples/ask.py ["your question"]

For `forge up` on this machine: the router at FORGE_ROUTER (default 127.0.0.1:50051), the key in
FORGE_API_KEY or else the admin key `forge up` wrote (FORGE_HOME/keys/admin.key), and
FORGE_ROUTER_CA naming the CA of a router that serves TLS (`forge up --tls`: ~/.forge/tls/ca.crt).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from forge_client import Client, ForgeError, IngestProgress, local_admin_key

README = Path(__file__).resolve().parent.parent / "README.md"
COLLECTION = "examples"


def stored(progress: IngestProgress) -> None:
    print(f"stored {progress.document_id}: {progress.chunk_count} chunks", file=sys.stderr)


def main() -> int:
    question = sys.argv[1] if len(sys.argv) > 1 else "How do I create an API key for a tenant?"
    api_key = os.environ.get("FORGE_API_KEY") or local_admin_key()
    ca = os.environ.get("FORGE_ROUTER_CA")
    try:
        with Client(api_key=api_key, tls=ca or False) as forge:
            forge.ingest_paths([README], collection=COLLECTION, on_progress=stored)
            with forge.chat(question, collection=COLLECTION, max_tokens=128, temperature=0) as answer:
                for delta in answer:
                    print(delta.text, end="", flush=True)
            print()
            summary = answer.summary
            for source in summary.citations:  # numbered as the prompt numbered them: [n] in the answer
                mark = "  <- cited" if source.cited else ""
                print(f"[{source.number}] {source.document_id} (part {source.chunk_index + 1}){mark}")
            print(f"(answered by {summary.model})")
            if summary.blocked and summary.verdict is not None:
                print(f"[blocked] {summary.verdict.message}")
    except ForgeError as err:  # "CODE: message", e.g. UNAUTHENTICATED: ... when the key is wrong
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
