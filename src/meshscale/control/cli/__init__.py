"""The admin side of ``meshscale-control``: a REST client and the verbs, one module per noun
(users, nodes, preauthkeys, apikeys, policy). Output is a table by default, or
``--output json|json-line|yaml``."""

from meshscale.control.cli.client import AdminClient, AdminError
from meshscale.control.cli.commands import NOUNS, add_commands, run_admin
from meshscale.control.cli.common import Noun, Parser, UsageError, connect
from meshscale.control.cli.output import OUTPUT_FORMATS, Output

__all__ = [
    "NOUNS",
    "OUTPUT_FORMATS",
    "AdminClient",
    "AdminError",
    "Noun",
    "Output",
    "Parser",
    "UsageError",
    "add_commands",
    "connect",
    "run_admin",
]
