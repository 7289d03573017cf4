"""Documents: delete a tenant's documents, list its collections. No gRPC here."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.errors import InvalidArgument
from services.router import validation
from services.router.deadline import Deadline
from services.router.ports import VectorIndex
from services.router.settings import RouterSettings


class Documents:
    def __init__(self, settings: RouterSettings, index: VectorIndex) -> None:
        self._settings = settings
        self._index = index

    def _timeout(self, what: str, deadline: Deadline) -> float:
        return deadline.rest(what, self._settings.call_timeout_s)

    async def delete(
        self, tenant: str, collection: str, document_ids: Sequence[str], deadline: Deadline
    ) -> tuple[int, int]:
        """(documents that existed, chunks deleted). The count is checked before any id is."""
        validation.count(document_ids, "document_ids", self._settings.max_delete_ids, "ids")
        collection = validation.collection(collection, self._settings.default_collection)
        if not document_ids:
            raise InvalidArgument("document_ids", "must name at least one document")
        for i, document_id in enumerate(document_ids):
            validation.document_id(document_id, f"document_ids[{i}]", self._settings.max_document_id_chars)
        return await self._index.delete_documents(
            tenant, collection, document_ids, self._timeout("deleting documents", deadline)
        )

    async def collections(self, tenant: str, deadline: Deadline) -> list[tuple[str, int]]:
        return await self._index.list_collections(tenant, self._timeout("listing collections", deadline))
