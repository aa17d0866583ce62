"""The admin side of ``meshscale-control``: a REST client and the CLI verbs.

The CLI never opens the database: it talks to a running server through the REST API,
over the server's unix socket (trusted, like Headscale's) or over HTTP(S) with an API
key (``--url`` + ``--api-key``, or ``cli.address`` / ``cli.api_key`` in the config).
Output is a table by default, or ``--output json|json-line|yaml``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NoReturn, TextIO
from urllib.parse import quote, urlencode, urlsplit

import yaml
from rich.console import Console
from rich.table import Table

from meshscale.control.config import CONFIG_ENV, ControlConfig, load_config, parse_duration

MAX_RESPONSE_BYTES: Final = 16 << 20  # a listing larger than this is refused, not buffered
OUTPUT_FORMATS: Final = ("table", "json", "json-line", "yaml")


class AdminError(Exception):
    """A request failed; the message is one line for the operator."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    """Blocking REST client. ``url`` (http/https) with ``api_key``, or ``unix_socket``."""

    def __init__(
        self, *, unix_socket: str | None = None, url: str | None = None,
        api_key: str | None = None, timeout: float = 10.0, insecure: bool = False,
    ) -> None:
        if not unix_socket and not url:
            raise AdminError("no server: give --url or a unix socket")
        self.unix_socket = unix_socket
        self.url = url.rstrip("/") if url else None
        self.api_key = api_key
        self.timeout = timeout
        self.insecure = insecure

    def _connection(self) -> http.client.HTTPConnection:
        if self.url is None:
            assert self.unix_socket is not None
            return _UnixHTTPConnection(self.unix_socket, self.timeout)
        parts = urlsplit(self.url)
        if parts.scheme == "https":
            ctx = ssl.create_default_context()
            if self.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(parts.netloc, timeout=self.timeout, context=ctx)
        if parts.scheme == "http":
            return http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        raise AdminError(f"--url must be http:// or https://, got {self.url[:60]!r}")

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        target = path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.url is not None and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        where = self.url or self.unix_socket
        conn = self._connection()
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(MAX_RESPONSE_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(f"cannot reach the server at {where}: {exc}") from exc
        finally:
            conn.close()
        if len(raw) > MAX_RESPONSE_BYTES:
            raise AdminError("response too large")
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"message": raw[:200].decode("utf-8", "replace").strip()}
        if resp.status != 200:
            message = payload.get("message") if isinstance(payload, dict) else None
            raise AdminError(f"{message or resp.reason} (HTTP {resp.status})")
        return payload


# ---- output -------------------------------------------------------------------------------

Column = tuple[str, Callable[[dict[str, Any]], str]]


def _when(value: str | None) -> str:
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def _expired(value: str | None) -> bool:
    if not value:
        return False
    try:
        return datetime.fromisoformat(value) <= datetime.now(UTC)
    except ValueError:
        return False


def _yes(value: Any) -> str:
    return "yes" if value else "no"


USER_COLUMNS: Final[list[Column]] = [
    ("ID", lambda u: u["id"]),
    ("Name", lambda u: u["name"]),
    ("Display name", lambda u: u["displayName"]),
    ("Email", lambda u: u["email"]),
    ("Created", lambda u: _when(u["createdAt"])),
]
NODE_COLUMNS: Final[list[Column]] = [
    ("ID", lambda n: n["id"]),
    ("Hostname", lambda n: n["name"]),
    ("Name", lambda n: n["givenName"]),
    ("User", lambda n: (n.get("user") or {}).get("name", "")),
    ("IP addresses", lambda n: ", ".join(n["ipAddresses"])),
    ("Tags", lambda n: ", ".join(n["tags"])),
    ("Online", lambda n: "online" if n["online"] else "offline"),
    ("Last seen", lambda n: _when(n["lastSeen"])),
    ("Expired", lambda n: _yes(_expired(n["expiry"]))),
]
PREAUTH_COLUMNS: Final[list[Column]] = [
    ("ID", lambda k: k["id"]),
    ("Key", lambda k: k["key"]),
    ("User", lambda k: (k.get("user") or {}).get("name", "")),
    ("Reusable", lambda k: _yes(k["reusable"])),
    ("Ephemeral", lambda k: _yes(k["ephemeral"])),
    ("Used", lambda k: _yes(k["used"])),
    ("Expiration", lambda k: _when(k["expiration"])),
    ("Created", lambda k: _when(k["createdAt"])),
    ("Tags", lambda k: ", ".join(k["aclTags"])),
]
APIKEY_COLUMNS: Final[list[Column]] = [
    ("ID", lambda k: k["id"]),
    ("Prefix", lambda k: k["prefix"]),
    ("Expiration", lambda k: _when(k["expiration"])),
    ("Created", lambda k: _when(k["createdAt"])),
    ("Last seen", lambda k: _when(k["lastSeen"])),
]


class Output:
    """Prints results in the chosen format."""

    def __init__(self, fmt: str, out: TextIO | None = None) -> None:
        self.fmt = fmt
        self.out = out or sys.stdout

    def data(self, payload: Any) -> bool:
        """Print ``payload`` in a machine format; False in table mode (caller prints)."""
        if self.fmt == "json":
            self.out.write(json.dumps(payload, indent=2) + "\n")
        elif self.fmt == "json-line":
            self.out.write(json.dumps(payload, separators=(",", ":")) + "\n")
        elif self.fmt == "yaml":
            self.out.write(yaml.safe_dump(payload, sort_keys=False))
        else:
            return False
        return True

    def table(self, payload: Any, rows: Sequence[dict[str, Any]], columns: list[Column]) -> None:
        # Machine formats print the list itself, as Headscale's CLI does.
        if self.data(list(rows)):
            return
        table = Table(box=None, header_style="bold", pad_edge=False)
        for name, _ in columns:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*(str(get(row)) for _, get in columns))
        Console(file=self.out, width=200, no_color=not self.out.isatty()).print(table)

    def message(self, payload: Any, text: str) -> None:
        # Machine formats print the object itself ({"user": {...}} -> {...}).
        if isinstance(payload, dict) and len(payload) == 1:
            payload = next(iter(payload.values()))
        if not self.data(payload):
            self.out.write(text + "\n")


# ---- verbs -------------------------------------------------------------------------------


def expiration_from(text: str | None) -> str | None:
    """``24h`` -> the RFC 3339 time that far from now (``0`` means never: None)."""
    if not text:
        return None
    delta = parse_duration(text)
    if not delta:
        return None
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


def users_list(c: AdminClient, o: Output, name: str | None, ident: str | None) -> None:
    query = {k: v for k, v in (("name", name), ("id", ident)) if v}
    payload = c.request("GET", "/api/v1/user", query=query)
    o.table(payload, payload["users"], USER_COLUMNS)


def _user_id(c: AdminClient, ref: str) -> str:
    """Resolve a user name (or id) to the id the path-based routes take."""
    if ref.isdigit():
        return ref
    users = c.request("GET", "/api/v1/user", query={"name": ref})["users"]
    if not users:
        raise AdminError(f"user {ref!r} not found")
    return str(users[0]["id"])


def users_create(c: AdminClient, o: Output, name: str, display: str, email: str) -> None:
    payload = c.request("POST", "/api/v1/user",
                        {"name": name, "displayName": display, "email": email})
    o.message(payload, f"User {payload['user']['name']!r} created (id {payload['user']['id']})")


def users_rename(c: AdminClient, o: Output, ref: str, new: str) -> None:
    uid = _user_id(c, ref)
    payload = c.request("POST", f"/api/v1/user/{uid}/rename/{quote(new, safe='')}")
    o.message(payload, f"User {uid} renamed to {new!r}")


def users_delete(c: AdminClient, o: Output, ref: str) -> None:
    uid = _user_id(c, ref)
    payload = c.request("DELETE", f"/api/v1/user/{uid}")
    o.message(payload, f"User {ref!r} deleted")


def nodes_list(c: AdminClient, o: Output, user: str | None) -> None:
    payload = c.request("GET", "/api/v1/node", query={"user": user} if user else None)
    o.table(payload, payload["nodes"], NODE_COLUMNS)


def nodes_register(c: AdminClient, o: Output, user: str, key: str) -> None:
    payload = c.request("POST", "/api/v1/node/register", query={"user": user, "key": key})
    node = payload["node"]
    o.message(payload, f"Node {node['givenName']!r} registered (id {node['id']}, "
                       f"{', '.join(node['ipAddresses'])})")


PENDING_COLUMNS: Final[list[Column]] = [
    ("Key", lambda r: r["id"]),
    ("Hostname", lambda r: r["hostname"]),
    ("Node key", lambda r: r["nodeKey"]),
    ("Expiration", lambda r: _when(r["expiration"])),
]


def nodes_pending(c: AdminClient, o: Output) -> None:
    payload = c.request("GET", "/api/v1/registration")
    o.table(payload, payload["registrations"], PENDING_COLUMNS)


def node_action(
    c: AdminClient, o: Output, node_id: str, method: str, suffix: str, done: str,
    body: dict[str, Any] | None = None,
) -> None:
    if not node_id.isdigit():
        raise AdminError(f"node identifier must be a number, got {node_id[:30]!r}")
    payload = c.request(method, f"/api/v1/node/{node_id}{suffix}", body)
    o.message(payload, done)


def preauthkeys_list(c: AdminClient, o: Output, user: str | None) -> None:
    payload = c.request("GET", "/api/v1/preauthkey", query={"user": user} if user else None)
    o.table(payload, payload["preAuthKeys"], PREAUTH_COLUMNS)


def preauthkeys_create(
    c: AdminClient, o: Output, user: str, reusable: bool, ephemeral: bool,
    expiration: str | None, tags: list[str],
) -> None:
    body: dict[str, Any] = {"user": user, "reusable": reusable, "ephemeral": ephemeral,
                            "aclTags": tags}
    exp = expiration_from(expiration or "1h")
    if exp is not None:
        body["expiration"] = exp
    payload = c.request("POST", "/api/v1/preauthkey", body)
    o.message(payload, payload["preAuthKey"]["key"])


def preauthkeys_expire(c: AdminClient, o: Output, key_id: str | None, key: str | None) -> None:
    body = {"id": key_id} if key_id else {"key": key or ""}
    payload = c.request("POST", "/api/v1/preauthkey/expire", body)
    o.message(payload, "Key expired")


def apikeys_list(c: AdminClient, o: Output) -> None:
    payload = c.request("GET", "/api/v1/apikey")
    o.table(payload, payload["apiKeys"], APIKEY_COLUMNS)


def apikeys_create(c: AdminClient, o: Output, expiration: str | None) -> None:
    body = {}
    exp = expiration_from(expiration or "90d")
    if exp is not None:
        body["expiration"] = exp
    payload = c.request("POST", "/api/v1/apikey", body)
    o.message(payload, payload["apiKey"])


def apikeys_expire(c: AdminClient, o: Output, prefix: str, delete: bool = False) -> None:
    if delete:
        payload = c.request("DELETE", f"/api/v1/apikey/{quote(prefix, safe='')}")
        o.message(payload, "Key deleted")
    else:
        payload = c.request("POST", "/api/v1/apikey/expire", {"prefix": prefix})
        o.message(payload, "Key expired")


# ---- command line ---------------------------------------------------------------------

URL_ENV = "MESHSCALE_CONTROL_URL"
API_KEY_ENV = "MESHSCALE_CONTROL_API_KEY"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="meshscale-control", description="meshscale coordination server")
    p.add_argument("-c", "--config", help=f"YAML config file (or ${CONFIG_ENV})")
    p.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default="table")
    p.add_argument("--state-dir", help="state directory (default /var/lib/meshscale-control)")
    p.add_argument("--url", help=f"remote server URL, with --api-key (or ${URL_ENV})")
    p.add_argument("--api-key", help=f"API key for --url (or ${API_KEY_ENV})")
    p.add_argument("--socket", help="the server's unix socket (default from the config)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("serve", help="run the control server")
    sub.add_parser("version", help="print the version")
    c = sub.add_parser("import-headscale",
                       help="copy users and nodes from a Headscale SQLite database (offline)")
    c.add_argument("--db", required=True, help="Headscale's db.sqlite")
    c.add_argument("--noise-key", help="Headscale's noise_private.key (keeps the control key)")
    c.add_argument("--derp-key", help="Headscale's derp_server_private.key")
    sub.add_parser("configtest", help="check the configuration")

    users = sub.add_parser("users", aliases=["user"], help="manage users")
    us = users.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    c = us.add_parser("create")
    c.add_argument("name")
    c.add_argument("-d", "--display-name", default="")
    c.add_argument("-e", "--email", default="")
    c = us.add_parser("list", aliases=["ls"])
    c.add_argument("-n", "--name")
    c.add_argument("-i", "--identifier")
    c = us.add_parser("rename")
    c.add_argument("old", nargs="?", help="current name or id")
    c.add_argument("new", nargs="?")
    c.add_argument("-i", "--identifier")
    c.add_argument("-n", "--name")
    c.add_argument("-r", "--new-name")
    c = us.add_parser("delete", aliases=["destroy"])
    c.add_argument("user", nargs="?", help="name or id")
    c.add_argument("-i", "--identifier")
    c.add_argument("-n", "--name")
    c.add_argument("--force", action="store_true", help="accepted for Headscale parity")

    nodes = sub.add_parser("nodes", aliases=["node"], help="manage nodes")
    ns = nodes.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    c = ns.add_parser("list", aliases=["ls"])
    c.add_argument("-u", "--user")
    ns.add_parser("pending", help="list registrations waiting for `nodes register`")
    c = ns.add_parser("register")
    c.add_argument("-u", "--user", required=True)
    c.add_argument("-k", "--key", required=True, help="registration id (or the AuthURL)")
    for verb in ("delete", "expire", "rename", "tag", "move", "approve-routes"):
        c = ns.add_parser(verb)
        c.add_argument("-i", "--identifier", required=True, help="node id")
        if verb == "delete":
            c.add_argument("--force", action="store_true")
        elif verb == "rename":
            c.add_argument("new_name")
        elif verb == "tag":
            c.add_argument("-t", "--tags", action="append", default=[],
                           help="tag:name (repeat or comma-separate; none clears)")
        elif verb == "move":
            c.add_argument("-u", "--user", required=True)
        elif verb == "approve-routes":
            c.add_argument("-r", "--routes", default="", help="comma-separated prefixes")
        elif verb == "expire":
            c.add_argument("-e", "--expiry", help="RFC 3339 time (default now)")

    paks = sub.add_parser("preauthkeys", aliases=["preauthkey"], help="manage pre-auth keys")
    ps = paks.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    c = ps.add_parser("create")
    c.add_argument("-u", "--user", required=True)
    c.add_argument("--reusable", action="store_true")
    c.add_argument("--ephemeral", action="store_true")
    c.add_argument("-e", "--expiration", default="1h", help="lifetime, e.g. 24h (0: never)")
    c.add_argument("--tags", action="append", default=[], help="tag:name (comma-separated)")
    c = ps.add_parser("list", aliases=["ls"])
    c.add_argument("-u", "--user")
    c = ps.add_parser("expire")
    c.add_argument("key", nargs="?", help="the key (or its prefix)")
    c.add_argument("--id")
    c.add_argument("-u", "--user", help="accepted for Headscale parity")

    pol = sub.add_parser("policy", help="get or set the policy (policy.mode database)")
    pos = pol.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    pos.add_parser("get")
    c = pos.add_parser("set")
    c.add_argument("-f", "--file", required=True, help="policy file (HuJSON), - for stdin")

    apis = sub.add_parser("apikeys", aliases=["apikey"], help="manage API keys")
    aps = apis.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    c = aps.add_parser("create")
    c.add_argument("-e", "--expiration", default="90d")
    aps.add_parser("list", aliases=["ls"])
    for verb in ("expire", "delete"):
        c = aps.add_parser(verb)
        c.add_argument("-p", "--prefix", required=True)
    return p


def _split(values: Sequence[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def load(args: argparse.Namespace) -> ControlConfig:
    path = args.config or os.environ.get(CONFIG_ENV) or None
    return load_config(path, state_dir=args.state_dir)


def _client(args: argparse.Namespace, cfg: ControlConfig) -> AdminClient:
    # An explicit --socket wins over a remote address from the environment or config.
    url = args.url or (None if args.socket else os.environ.get(URL_ENV) or cfg.cli.address)
    if url:
        if "://" not in url:
            url = f"https://{url}"  # cli.address is host:port in Headscale
        key = args.api_key or os.environ.get(API_KEY_ENV) or cfg.cli.api_key
        if not key:
            raise UsageError("--url needs --api-key (or $MESHSCALE_CONTROL_API_KEY)")
        return AdminClient(url=url, api_key=key, insecure=cfg.cli.insecure,
                           timeout=max(cfg.cli.timeout.total_seconds(), 1.0))
    sock = args.socket or str(cfg.unix_socket)
    return AdminClient(unix_socket=sock, timeout=max(cfg.cli.timeout.total_seconds(), 1.0))


def _read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def _pick(*values: str | None, what: str) -> str:
    for v in values:
        if v:
            return v
    raise UsageError(f"missing {what}")


def run_admin(args: argparse.Namespace, cfg: ControlConfig) -> None:
    c = _client(args, cfg)
    o = Output(args.output)
    cmd = {"user": "users", "node": "nodes", "preauthkey": "preauthkeys",
           "apikey": "apikeys"}.get(args.command, args.command)
    verb = {"ls": "list", "destroy": "delete"}.get(args.verb, args.verb)
    if cmd == "users":
        if verb == "create":
            users_create(c, o, args.name, args.display_name, args.email)
        elif verb == "list":
            users_list(c, o, args.name, args.identifier)
        elif verb == "rename":
            old = _pick(args.identifier, args.name, args.old, what="user (-i ID or -n NAME)")
            new = _pick(args.new_name, args.new, what="new name (-r NAME)")
            users_rename(c, o, old, new)
        else:
            users_delete(
                c, o, _pick(args.identifier, args.name, args.user, what="user (-i or -n)")
            )
    elif cmd == "nodes":
        _run_nodes(c, o, args, verb)
    elif cmd == "preauthkeys":
        if verb == "create":
            preauthkeys_create(c, o, args.user, args.reusable, args.ephemeral,
                               args.expiration, _split(args.tags))
        elif verb == "list":
            preauthkeys_list(c, o, args.user)
        else:
            if not (args.id or args.key):
                raise UsageError("preauthkeys expire needs --id ID or the KEY")
            preauthkeys_expire(c, o, args.id, args.key)
    elif cmd == "policy":
        if verb == "get":
            payload = c.request("GET", "/api/v1/policy")
            o.message(payload, payload["policy"])
        else:
            text = sys.stdin.read() if args.file == "-" else _read_file(args.file)
            payload = c.request("PUT", "/api/v1/policy", {"policy": text})
            o.message(payload, "Policy updated")
    elif cmd == "apikeys":
        if verb == "create":
            apikeys_create(c, o, args.expiration)
        elif verb == "list":
            apikeys_list(c, o)
        else:
            apikeys_expire(c, o, args.prefix, delete=verb == "delete")


def _run_nodes(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    if verb == "list":
        nodes_list(c, o, args.user)
        return
    if verb == "register":
        nodes_register(c, o, args.user, args.key)
        return
    if verb == "pending":
        nodes_pending(c, o)
        return
    nid = args.identifier
    if verb == "delete":
        node_action(c, o, nid, "DELETE", "", f"Node {nid} deleted")
    elif verb == "expire":
        body = {"expiry": args.expiry} if args.expiry else {}
        node_action(c, o, nid, "POST", "/expire", f"Node {nid} expired", body)
    elif verb == "rename":
        node_action(c, o, nid, "POST", f"/rename/{quote(args.new_name, safe='')}",
                    f"Node {nid} renamed to {args.new_name!r}")
    elif verb == "tag":
        node_action(c, o, nid, "POST", "/tags", f"Node {nid} tagged",
                    {"tags": _split(args.tags)})
    elif verb == "move":
        node_action(c, o, nid, "POST", "/user", f"Node {nid} moved to {args.user!r}",
                    {"user": args.user})
    elif verb == "approve-routes":
        node_action(c, o, nid, "POST", "/approve_routes", f"Routes of node {nid} set",
                    {"routes": _split([args.routes])})
