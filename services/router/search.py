"""Search: the chunks a chat with this question would be grounded on. No gRPC here.

Retrieval failures are errors here (there is no answer to degrade); a fail-open rail that is down
lets the chunks through unchecked, and the result says so (`degraded`).
"""

from __future__ import annotations

from services.router import validation
from services.router.deadline import Deadline
from services.router.ports import SearchResult
from services.router.retrieval import Retriever
from services.router.settings import RouterSettings
from services.router.stages import Degradation


class Searcher:
    def __init__(self, settings: RouterSettings, retriever: Retriever) -> None:
        self._settings = settings
        self._retriever = retriever

    async def search(
        self, tenant: str, query: str, collection: str, top_k: int, deadline: Deadline
    ) -> SearchResult:
        s = self._settings
        validation.text(query, "query", s.max_message_chars)
        collection = validation.collection(collection, s.default_collection)
        top_k = validation.top_k(top_k, s.default_top_k, s.max_top_k)
        degradation = Degradation()
        vector = await self._retriever.query_vector(query, deadline, degradation, "fail")
        assert vector is not None  # "fail" raises instead of returning None
        hits = await self._retriever.search(tenant, collection, vector, top_k, deadline, degradation, "fail")
        chunks = await self._retriever.checked(hits, deadline, degradation)
        return SearchResult(chunks, degraded=bool(degradation), degraded_reasons=degradation.reasons)
