"""The router: admission control and RAG orchestration in front of the LLM, embeddings and
guardrails services, over Milvus."""
