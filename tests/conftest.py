from __future__ import annotations

import os

# Models load from packages only; a test must never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite runs the mesh on the smallest model (SmolLM2-135M) on vLLM, as it was measured and
# sized (make test's time budget); a user's default (llama.cpp, Qwen2.5-Coder-0.5B) is tested by
# the tests that clear these (tests/e2e/test_default_model.py).
os.environ.setdefault("FORGE_LLM_ENGINE", "vllm")
os.environ.setdefault("FORGE_LLM_MODEL", "tiny")
