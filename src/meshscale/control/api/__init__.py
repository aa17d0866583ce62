"""The control server's REST API (/api/v1, Headscale-compatible shapes)."""

from meshscale.control.api.openapi import openapi_document
from meshscale.control.api.routes import Route
from meshscale.control.api.server import API, MAX_API_BODY
from meshscale.control.api.table import ROUTES

__all__ = ["API", "MAX_API_BODY", "ROUTES", "Route", "openapi_document"]
