"""Admission of nodes: ``POST /machine/register`` and the ``/register/<id>`` page."""

from meshscale.control.auth.register import REGISTER_PATH, RegisterHandler, register_page
from meshscale.control.auth.request import NodeBindingError, decode_request, lookup_node

__all__ = [
    "REGISTER_PATH",
    "NodeBindingError",
    "RegisterHandler",
    "decode_request",
    "lookup_node",
    "register_page",
]
