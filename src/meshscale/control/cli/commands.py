"""The admin commands of ``meshscale-control``, one :class:`~.common.Noun` per module."""

from __future__ import annotations

import argparse
from typing import Final

from meshscale.control.cli import (
    apikeys,
    audit,
    auth,
    nodes,
    policy,
    preauthkeys,
    tailnets,
    users,
)
from meshscale.control.cli.common import Noun, Parser, Subparsers, connect
from meshscale.control.cli.output import Output
from meshscale.control.config import ControlConfig

NOUNS: Final[tuple[Noun, ...]] = (users.NOUN, nodes.NOUN, preauthkeys.NOUN, policy.NOUN,
                                  apikeys.NOUN, auth.NOUN, audit.NOUN,
                                  tailnets.NOUN)  # fmt: skip
# Headscale's verb aliases (cobra Aliases), per verb.
ALIASES: Final = {
    "list": ("ls", "show"),
    "create": ("c", "new"),
    "delete": ("rm", "del", "remove", "destroy"),
    "expire": ("revoke", "exp"),
}
VERB_ALIASES: Final = {alias: verb for verb, names in ALIASES.items() for alias in names}


def add_commands(sub: Subparsers[Parser]) -> None:
    """Add every noun, with its verbs, to the top-level subcommands."""
    for noun in NOUNS:
        p = sub.add_parser(noun.name, aliases=list(noun.aliases), help=noun.help)
        verbs = p.add_subparsers(dest="verb", required=True, parser_class=Parser)
        noun.add_verbs(verbs)
        for verb, parser in list(verbs.choices.items()):
            for alias in ALIASES.get(verb, ()):
                verbs.choices.setdefault(alias, parser)


def run_admin(args: argparse.Namespace, cfg: ControlConfig) -> None:
    """Run the admin verb ``args`` names against the server ``cfg`` and ``args`` choose."""
    noun = next(n for n in NOUNS if args.command == n.name or args.command in n.aliases)
    noun.run(connect(args, cfg), Output(args.output), args, VERB_ALIASES.get(args.verb, args.verb))
