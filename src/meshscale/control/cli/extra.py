"""Top-level verbs of ``meshscale-control`` that are not a noun: ``health`` (asks the
server), and the offline ``generate private-key`` and ``completion bash|zsh|fish``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Final

from meshscale.control.cli.client import AdminClient
from meshscale.control.cli.common import Parser, Subparsers
from meshscale.control.cli.output import Output

OFFLINE_COMMANDS: Final = frozenset({"generate", "gen", "completion"})
SHELLS: Final = ("bash", "zsh", "fish")


def add_extra_commands(sub: Subparsers[Parser]) -> None:
    sub.add_parser("health", help="ask the server whether it is healthy")
    g = sub.add_parser("generate", aliases=["gen"], help="generate keys")
    g.add_subparsers(dest="verb", required=True, parser_class=Parser).add_parser(
        "private-key", help="a new machine private key (privkey:...)"
    )
    c = sub.add_parser("completion", help="shell completion script")
    c.add_argument("shell", choices=SHELLS)


def run_health(c: AdminClient, o: Output) -> None:
    payload = c.request("GET", "/api/v1/health")
    o.message(
        {"health": payload},
        "healthy" if payload.get("databaseConnectivity", True) else "unhealthy: no database",
    )


def words(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each command's name -> its verbs (for completion), read off the parser itself."""
    out: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                verbs: list[str] = []
                for a in sp._actions:
                    if isinstance(a, argparse._SubParsersAction):
                        verbs = list(a.choices)
                out[name] = verbs
    return out


def completion(shell: str, prog: str, table: dict[str, list[str]]) -> str:
    cmds = " ".join(table)
    cases = "".join(f'    {name}) verbs="{" ".join(v)}";;\n' for name, v in table.items() if v)
    body = (
        f'  local cur=${{COMP_WORDS[COMP_CWORD]}} verbs=""\n'
        f'  if [ "$COMP_CWORD" -eq 1 ]; then COMPREPLY=($(compgen -W "{cmds}" -- "$cur"));'
        f" return; fi\n  case ${{COMP_WORDS[1]}} in\n{cases}  esac\n"
        f'  COMPREPLY=($(compgen -W "$verbs -c --config -o --output --force" -- "$cur"))\n'
    )
    fn = "_" + prog.replace("-", "_")
    if shell == "bash":
        return f"{fn}() {{\n{body}}}\ncomplete -F {fn} {prog}\n"
    if shell == "zsh":
        return (
            f"autoload -U +X bashcompinit && bashcompinit\n{fn}() {{\n{body}}}\n"
            f"complete -F {fn} {prog}\n"
        )
    lines = [f"complete -c {prog} -f -n __fish_use_subcommand -a '{cmds}'"]
    lines += [
        f"complete -c {prog} -f -n '__fish_seen_subcommand_from {name}' -a '{' '.join(v)}'"
        for name, v in table.items()
        if v
    ]
    return "\n".join(lines) + "\n"


def run_offline(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    o = Output(args.output)
    if args.command in ("generate", "gen"):
        from meshscale.key import MachinePrivate  # (cryptography: only for this verb)

        key = MachinePrivate.generate(os.urandom(32)).text()
        if not o.data({"private_key": key}):
            sys.stdout.write(key + "\n")
    else:
        sys.stdout.write(completion(args.shell, parser.prog, words(parser)))
    return 0
