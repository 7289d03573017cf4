"""The OpenAI-compatible HTTP front: FastAPI on uvicorn inside a Forge service process, a thin
adapter over the router (which does auth, admission and RAG)."""
