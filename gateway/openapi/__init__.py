"""OpenAPI 3.1 for the REST transcoder: the document from its bindings, and the pages serving it."""

from gateway.openapi.document import (
    DocumentOptions,
    Operation,
    OperationHook,
    UpdateWithoutMask,
    build_document,
    dumps,
    error_response,
)
from gateway.openapi.schemas import SchemaSet, ref
from gateway.openapi.serving import DOCS_PATH, DOCUMENT_PATH, OpenApiPages

__all__ = [
    "DOCS_PATH",
    "DOCUMENT_PATH",
    "DocumentOptions",
    "OpenApiPages",
    "Operation",
    "OperationHook",
    "SchemaSet",
    "UpdateWithoutMask",
    "build_document",
    "dumps",
    "error_response",
    "ref",
]
