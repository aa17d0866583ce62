"""The whole /api/v1 route table: routes.py's operations plus node sharing (shares.py)."""

from __future__ import annotations

from meshscale.control.api import routes
from meshscale.control.api.routes import Route
from meshscale.control.api.shares import SHARE_ROUTES

ROUTES: tuple[Route, ...] = routes.ROUTES + SHARE_ROUTES
