"""``meshscale up``: set prefs, log in (auth key or interactive URL) and wait for Running."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from . import routeflags
from .common import UNSUPPORTED_UP_FLAGS, add_bool_flag, parse_duration
from .localclient import CLIError, LocalClient

POLL_INTERVAL = 0.2  # seconds between status polls while waiting


class _Unsupported(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option: str | None = None) -> None:
        name = (option or "").lstrip("-")
        raise CLIError(
            f"--{name} is not supported yet ({UNSUPPORTED_UP_FLAGS.get(name, 'later work')})",
            code=2,
        )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add(sub.add_parser("up", help="connect to the tailnet, logging in if needed"))
    # tailscale's `login`: the same flags as `up`, on a new empty login profile (the current
    # one stays saved: `meshscale switch` goes back to it).
    _add(sub.add_parser("login", help="log in to an account, adding a login profile"),
         login=True)  # fmt: skip


def _add(p: argparse.ArgumentParser, login: bool = False) -> None:
    p.add_argument("--login-server", default="", metavar="URL", help="control server URL")
    p.add_argument("--authkey", "--auth-key", dest="authkey", default="", metavar="KEY",
                   help="node authorization key, or file:PATH to read it")  # fmt: skip
    p.add_argument("--hostname", default="", help="hostname to use instead of the OS's")
    p.add_argument(
        "--advertise-tags",
        default=None,
        metavar="TAGS",
        help="comma-separated tags (tag:name) to request for this node",
    )
    add_bool_flag(p, "accept-dns", None, "accept DNS configuration from the control server")
    add_bool_flag(p, "reset", False, "reset unspecified settings to their defaults")
    p.add_argument("--timeout", type=parse_duration, default=0.0,
                   help="give up after this long (0 = wait forever), e.g. 30s")  # fmt: skip
    add_bool_flag(p, "json", False, "print the result as JSON")
    add_bool_flag(p, "force-reauth", False, "log in again even if this node is logged in")
    routeflags.add(p)
    for name in UNSUPPORTED_UP_FLAGS:
        p.add_argument(f"--{name}", nargs="?", action=_Unsupported, help=argparse.SUPPRESS)
    p.set_defaults(run=run, new_profile=login)


def check_reverts(current: dict[str, Any], args: argparse.Namespace) -> None:
    """tailscale's rule: an ``up`` that mentions settings must mention every non-default one
    (or pass --reset), so a forgotten flag never silently reverts a setting."""
    mentioned = {"login-server": bool(args.login_server), "hostname": bool(args.hostname),
                 "accept-dns": args.accept_dns is not None,
                 "advertise-tags": args.advertise_tags is not None,
                 **routeflags.mentioned(args)}  # fmt: skip
    if not any(mentioned.values()):
        return  # a bare `up` brings the node up with its settings
    now = {"login-server": current.get("ControlURL") or "",
           "hostname": current.get("Hostname") or "",
           "accept-dns": "false" if current.get("CorpDNS") is False else "",
           "advertise-tags": ",".join(current.get("AdvertiseTags") or []),
           **routeflags.current(current)}  # fmt: skip
    missing = [f"--{k}={v}" for k, v in now.items() if v and not mentioned[k]]
    if missing:
        raise CLIError("changing settings via 'meshscale up' requires mentioning all non-default "
                       f"flags; add {' '.join(missing)} or use --reset (or 'meshscale set')",
                       code=2)  # fmt: skip


def _tags(text: str) -> list[str]:
    """``--advertise-tags`` as a list; each must look like tag:name (as tailscale checks)."""
    tags = [t.strip() for t in text.split(",") if t.strip()]
    for t in tags:
        if not re.fullmatch(r"tag:[A-Za-z][A-Za-z0-9-]*", t):
            raise CLIError(
                f"tag {t!r}: tags must start with 'tag:' followed by a "
                "letter, then letters, digits or '-'",
                code=2,
            )
    return tags


def run(args: argparse.Namespace, client: LocalClient) -> int:
    if args.login_server and not args.login_server.startswith(("http://", "https://")):
        raise CLIError(f"--login-server must be an http:// or https:// URL: {args.login_server!r}")
    auth_key = args.authkey
    if auth_key.startswith("file:"):  # as upstream: read the key from a file
        try:
            with open(auth_key[5:]) as f:
                auth_key = f.read().strip()
        except OSError as exc:
            raise CLIError(f"--authkey: cannot read {auth_key[5:]}: {exc.strerror}") from exc
    if args.new_profile:  # `login`: the flags given describe a new profile
        client.put("profiles/")
    current = client.get("prefs")
    if not args.reset and not args.new_profile:
        check_reverts(current, args)
    prefs: dict[str, Any] = {} if args.reset else dict(current)
    prefs["WantRunning"] = True
    if args.login_server or args.reset:
        prefs["ControlURL"] = args.login_server
    if args.hostname or args.reset:
        prefs["Hostname"] = args.hostname
    if args.accept_dns is not None:
        prefs["CorpDNS"] = args.accept_dns
    if args.advertise_tags is not None or args.reset:
        prefs["AdvertiseTags"] = _tags(args.advertise_tags or "")
    routeflags.apply(args, prefs, client, reset=bool(args.reset))
    if not prefs.get("ControlURL"):
        raise CLIError("no control server configured: pass --login-server=URL")
    if args.force_reauth:
        # Log out first: the node key is rotated and the login (URL or key) starts afresh.
        client.post("logout", {})
    client.post("start", {"Prefs": prefs, "AuthKey": auth_key, "Reset": bool(args.reset)})
    deadline = time.monotonic() + args.timeout if args.timeout else None
    printed_url = ""
    while True:
        st = client.get("status")
        state = st.get("BackendState")
        url = st.get("AuthURL") or ""
        if state == "Running":
            if args.json:
                print(json.dumps({"BackendState": state}, indent=2))
            elif printed_url:
                print("Success.")
            return 0
        if url and url != printed_url and state in ("NeedsLogin", "NeedsMachineAuth"):
            printed_url = url
            if args.json:
                print(json.dumps({"AuthURL": url, "BackendState": state}, indent=2))
            else:
                print(f"\nTo authenticate, visit:\n\n\t{url}\n", file=sys.stderr)
        if state == "NeedsMachineAuth" and not url and not printed_url:
            printed_url = "-"
            print("Waiting for the node to be approved by an admin...", file=sys.stderr)
        health = st.get("Health") or []
        fatal = [h for h in health if str(h).startswith("login:")]
        if fatal:
            raise CLIError(str(fatal[0]))
        if deadline is not None and time.monotonic() >= deadline:
            raise CLIError(f"timeout waiting for the node to come up (state {state})")
        time.sleep(POLL_INTERVAL)
