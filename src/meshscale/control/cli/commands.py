"""The admin commands of ``meshscale-control``, one :class:`~.common.Noun` per module."""

from __future__ import annotations

import argparse
from typing import Final

from meshscale.control.cli import apikeys, auth, nodes, policy, preauthkeys, users
from meshscale.control.cli.common import Noun, Parser, Subparsers, connect
from meshscale.control.cli.output import Output
from meshscale.control.config import ControlConfig

NOUNS: Final[tuple[Noun, ...]] = (users.NOUN, nodes.NOUN, preauthkeys.NOUN, policy.NOUN,
                                  apikeys.NOUN, auth.NOUN)  # fmt: skip
VERB_ALIASES: Final = {"ls": "list", "destroy": "delete"}


def add_commands(sub: Subparsers[Parser]) -> None:
    """Add every noun, with its verbs, to the top-level subcommands."""
    for noun in NOUNS:
        p = sub.add_parser(noun.name, aliases=list(noun.aliases), help=noun.help)
        noun.add_verbs(p.add_subparsers(dest="verb", required=True, parser_class=Parser))


def run_admin(args: argparse.Namespace, cfg: ControlConfig) -> None:
    """Run the admin verb ``args`` names against the server ``cfg`` and ``args`` choose."""
    noun = next(n for n in NOUNS if args.command == n.name or args.command in n.aliases)
    noun.run(connect(args, cfg), Output(args.output), args, VERB_ALIASES.get(args.verb, args.verb))
