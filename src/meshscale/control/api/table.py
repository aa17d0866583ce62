"""The whole /api/v1 route table: routes.py's operations plus node sharing (shares.py)
and tailnets (tailnets.py)."""

from __future__ import annotations

from meshscale.control.api import routes
from meshscale.control.api.routes import Route
from meshscale.control.api.shares import SHARE_ROUTES
from meshscale.control.api.tailnets import TAILNET_ROUTES

ROUTES: tuple[Route, ...] = routes.ROUTES + SHARE_ROUTES + TAILNET_ROUTES
