"""Outbound adapters: the LLM, embeddings and guardrails services over gRPC, and Milvus."""
