"""``meshscale completion bash|zsh|fish``: a shell completion script (tailscale's verb).

The verbs and each verb's flags are read off the CLI's own parser, so the script never
drifts from what the CLI accepts. It needs no daemon.
"""

from __future__ import annotations

import argparse

from .localclient import LocalClient

SHELLS = ("bash", "zsh", "fish")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=SHELLS, help="bash, zsh or fish")
    p.set_defaults(run=run)


def table(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Verb -> its long flags (hidden and refused ones left out)."""
    out: dict[str, list[str]] = {}
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sp in action.choices.items():
            out[name] = sorted(
                opt
                for a in sp._actions
                if a.help != argparse.SUPPRESS
                for opt in a.option_strings
                if opt.startswith("--") and opt != "--help"
            )
    return out


def script(shell: str, prog: str, verbs: dict[str, list[str]]) -> str:
    names = " ".join(verbs)
    fn = "_" + prog.replace("-", "_")
    if shell == "fish":
        lines = [f"complete -c {prog} -f -n __fish_use_subcommand -a '{names}'"]
        lines += [
            f"complete -c {prog} -f -n '__fish_seen_subcommand_from {verb}' -l {flag[2:]}"
            for verb, flags in verbs.items()
            for flag in flags
        ]
        return "\n".join(lines) + "\n"
    cases = "".join(f'    {v}) words="{" ".join(f)}";;\n' for v, f in verbs.items() if f)
    body = (
        '  local cur=${COMP_WORDS[COMP_CWORD]} words=""\n'
        f'  if [ "$COMP_CWORD" -eq 1 ]; then COMPREPLY=($(compgen -W "{names}" -- "$cur"));'
        " return; fi\n"
        f"  case ${{COMP_WORDS[1]}} in\n{cases}  esac\n"
        '  COMPREPLY=($(compgen -W "$words" -- "$cur"))\n'
    )
    head = "autoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh" else ""
    return f"{head}{fn}() {{\n{body}}}\ncomplete -F {fn} {prog}\n"


def run(args: argparse.Namespace, client: LocalClient) -> int:
    root: argparse.ArgumentParser = args.root_parser  # main.build_parser sets it
    print(script(args.shell, "meshscale", table(root)), end="")
    return 0
