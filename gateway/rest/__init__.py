"""The REST transcoder: JSON over HTTP into in-process calls of the registry's methods.

Layout, one concern per module (after grpc-gateway's runtime/):
  templates  path-template grammar and capture decoding    routes     the route trie
  bindings   google.api.http rules read from descriptors   request    path + body + query → message
  query      query string → fields                         values     URL text → field values
  fields     dotted field paths                            enums      enum names, lenient matching
  codec      JSON bodies in, JSON text out                 printer    message → proto3 JSON document
  form       form bodies → fields                          options    per-method options
  status     gRPC code → HTTP, error bodies                headers    headers ⇄ metadata
  streaming  NDJSON and SSE framing                        asgi       ASGI type aliases
  app        the ASGI app
"""

from gateway.rest.app import RestApp
from gateway.rest.options import ErrorWriter, RestErrorResponse, RestMethodOptions
from gateway.rest.request import BindingError
from gateway.rest.routes import RouteConflictError
from gateway.rest.status import http_status_for, status_body, status_to_dict
from gateway.rest.templates import TemplateError

__all__ = [
    "BindingError",
    "ErrorWriter",
    "RestApp",
    "RestErrorResponse",
    "RestMethodOptions",
    "RouteConflictError",
    "TemplateError",
    "http_status_for",
    "status_body",
    "status_to_dict",
]
