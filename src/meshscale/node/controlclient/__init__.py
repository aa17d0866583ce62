"""The node's control client: ts2021 session, register, map long poll, netmap with deltas."""

from .auto import Auto, Keys, LoginError
from .direct import ClientError, ControlURLError, Direct, parse_control_url
from .netmap import NetworkMap

__all__ = [
    "Auto",
    "ClientError",
    "ControlURLError",
    "Direct",
    "Keys",
    "LoginError",
    "NetworkMap",
    "parse_control_url",
]
