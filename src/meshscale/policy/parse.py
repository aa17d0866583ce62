"""Policy validation: HuJSON text → :class:`~meshscale.policy.model.Policy`.

Follows docs/protocol/policy.md §1: field names match case-insensitively, unknown keys are
refused, ACL keys starting with ``#`` are dropped, aliases are trimmed. Every refusal is a
:class:`PolicyError` that names the offending value and its ``line:column``, e.g.
``undefined group "group:nosuch" at 7:23``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Final

from meshscale.policy.hujson import JNode
from meshscale.policy.hujson import parse as parse_hujson
from meshscale.policy.manager import PolicyError
from meshscale.policy.model import (
    AUTOGROUPS,
    Alias,
    IPPrefix,
    NodeAttr,
    Policy,
    PolicyTest,
    Rule,
    SSHRule,
)

PROTOCOLS: Final = {
    "icmp": 1, "igmp": 2, "ipv4": 4, "ip-in-ip": 4, "tcp": 6, "egp": 8, "igp": 9, "udp": 17,
    "gre": 47, "esp": 50, "ah": 51, "ipv6-icmp": 58, "sctp": 132, "fc": 133,
}  # fmt: skip
_PORTED: Final = frozenset({6, 17, 132})  # protocols that may name specific ports
_PORTS_RE: Final = re.compile(r"[0-9*,\- ]+")
_TAG_RE: Final = re.compile(r"tag:[A-Za-z][A-Za-z0-9-]*")
_CAP_RE: Final = re.compile(r"[a-z0-9.-]+\.[a-z]{2,}/[A-Za-z0-9_./-]+")
_TS_CAP_ALLOW: Final = frozenset(
    f"tailscale.com/cap/{c}" for c in ("drive", "relay", "webui", "kubernetes", "tsidp", "secrets")
)
_IGNORED_TOP: Final = frozenset({"postures", "defaultsrcposture"})

TOP_KEYS: Final = ("acls", "grants", "groups", "tagOwners", "hosts", "autoApprovers",
                   "nodeAttrs", "ssh", "tests", "sshTests", "randomizeClientPort",
                   "postures", "defaultSrcPosture")  # fmt: skip


def _err(what: str, node: JNode) -> PolicyError:
    return PolicyError(f"{what} at {node.at}")


def _fields(
    node: JNode, allowed: tuple[str, ...], where: str, drop_hash: bool = False
) -> dict[str, JNode]:
    if not isinstance(node.value, dict):
        raise _err(f"{where} must be an object", node)
    canon = {a.lower(): a for a in allowed}
    out: dict[str, JNode] = {}
    for key, val in node.value.items():
        if drop_hash and key.startswith("#"):
            continue
        name = canon.get(key.lower())
        if name is None:
            line, col = node.key_pos.get(key, (node.line, node.col))
            raise PolicyError(f'unknown field "{key}" in {where} at {line}:{col}')
        if name in out:
            raise _err(f'duplicate field "{key}" in {where}', val)
        out[name] = val
    return out


def _str(node: JNode, what: str) -> str:
    if not isinstance(node.value, str):
        raise _err(f"{what} must be a string", node)
    return node.value.strip()


def _list(node: JNode, what: str) -> list[JNode]:
    if not isinstance(node.value, list):
        raise _err(f"{what} must be a list", node)
    return node.value


def _strs(node: JNode, what: str) -> list[tuple[str, JNode]]:
    return [(_str(n, what), n) for n in _list(node, what)]


def parse_prefix(text: str, node: JNode, what: str = "CIDR") -> IPPrefix:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise _err(f'bad {what} "{text}"', node) from None


class _Validator:
    def __init__(self, idp_groups: bool = False) -> None:
        self.idp_groups = idp_groups
        self.idp_refs: dict[str, None] = {}  # undefined groups, in order of first use
        self.groups: dict[str, tuple[str, ...]] = {}
        self.tag_owners: dict[str, tuple[Alias, ...]] = {}
        self.hosts: dict[str, IPPrefix] = {}
        self.warnings: list[str] = []

    # ---- aliases ------------------------------------------------------------------------

    def alias(self, text: str, node: JNode) -> Alias:
        at = node.at
        if not text:
            raise _err("empty alias", node)
        if text == "*":
            return Alias("wildcard", "*", at=at)
        looks_ip = text[0].isdigit() or (
            ":" in text and not text.startswith(("group:", "tag:", "autogroup:"))
        )
        if looks_ip and "@" not in text:
            return Alias("prefix", text, parse_prefix(text, node, "IP or CIDR"), at)
        if "@" in text:
            local, _, domain = text.partition("@")
            if not local or "@" in domain:
                raise _err(f'bad user "{text}"', node)
            return Alias("user", text, at=at)
        if text.startswith("group:"):
            if text not in self.groups:
                if not self.idp_groups:
                    raise _err(f'undefined group "{text}"', node)
                self.idp_refs[text] = None  # an IdP group (sign-in claims)
            return Alias("group", text, at=at)
        if text.startswith("tag:"):
            if not _TAG_RE.fullmatch(text):
                raise _err(
                    f'bad tag "{text}" (tag: then a letter, then letters, digits or -)', node
                )
            if text not in self.tag_owners:
                raise _err(f'undefined tag "{text}" (no tagOwners entry)', node)
            return Alias("tag", text, at=at)
        if text.startswith("autogroup:"):
            name = text.removeprefix("autogroup:")
            if name not in AUTOGROUPS:
                raise _err(f'unknown autogroup "{text}"', node)
            return Alias("autogroup", name, at=at)
        if text in self.hosts:
            return Alias("host", text, self.hosts[text], at)
        raise _err(f'undefined host "{text}"', node)

    def src(self, node: JNode, what: str, *, grant: bool) -> tuple[Alias, ...]:
        out = []
        for text, n in _strs(node, what):
            a = self.alias(text, n)
            if a.kind == "autogroup" and a.name in ("self", "internet", "nonroot"):
                raise _err(f'"autogroup:{a.name}" is not valid as a source', n)
            out.append(a)
        del grant
        return tuple(out)

    def check_dst(self, a: Alias, n: JNode) -> None:
        if a.kind == "autogroup" and a.name in ("danger-all", "nonroot"):
            raise _err(f'"autogroup:{a.name}" is not valid as a destination', n)

    def check_self(
        self, src: tuple[Alias, ...], dst: tuple[Alias, ...], node: JNode, grant: bool
    ) -> None:
        if not any(d.kind == "autogroup" and d.name == "self" for d in dst):
            return
        for s in src:
            ok = s.kind in ("user", "group") or (s.kind == "autogroup" and s.name == "member")
            ok = ok or (s.kind == "wildcard" and not grant)
            if not ok:
                raise _err(
                    "autogroup:self can only be used with users, groups or autogroup:member,"
                    f' not "{s}"',
                    node,
                )

    # ---- ports and protocols ------------------------------------------------------------

    @staticmethod
    def proto(text: str, node: JNode) -> int | None:
        if not text:
            return None
        if text in PROTOCOLS:
            return PROTOCOLS[text]
        if text.isdigit() and not text.startswith("0") and 1 <= int(text) <= 255:
            return int(text)
        raise _err(f'bad protocol "{text}"', node)

    @staticmethod
    def ports(text: str, node: JNode) -> tuple[tuple[int, int], ...]:
        if text == "*":
            return ((0, 65535),)
        out = []
        for part in text.split(","):
            lo, dash, hi = part.partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()) or len(part) > 11:
                raise _err(f'bad port "{part}" (use a number, a range N-M or *)', node)
            first, last = int(lo), int(hi) if dash else int(lo)
            if first == 0 and not dash:
                raise _err(f'bad port "{part}": first port must be >0, or use "*"', node)
            if last > 65535 or first > last:
                raise _err(f'bad port range "{part}"', node)
            out.append((first, last))
        return tuple(out)

    def dst_port(self, text: str, node: JNode) -> tuple[Alias, tuple[tuple[int, int], ...]]:
        if text.startswith("["):  # [v6]:ports
            addr, close, rest = text[1:].partition("]")
            if not close or not rest.startswith(":"):
                raise _err(f'bad destination "{text}"', node)
            alias_text, ports = addr, rest[1:]
        else:
            alias_text, colon, ports = text.rpartition(":")
            if not colon or not alias_text or not _PORTS_RE.fullmatch(ports.strip()):
                named = alias_text not in ("tag", "group", "autogroup")
                if colon and named and re.fullmatch(r"[a-z]+", ports.strip()):
                    raise _err(f'bad port "{ports}" (named ports are not supported)', node)
                raise _err(f'destination "{text}" needs a port ("{text}:*" for all)', node)
        alias = self.alias(alias_text.strip(), node)
        self.check_dst(alias, node)
        return alias, self.ports(ports.strip(), node)

    # ---- sections -----------------------------------------------------------------------

    def acl(self, node: JNode) -> list[Rule]:
        f = _fields(node, ("action", "src", "proto", "dst"), "acl rule", drop_hash=True)
        for k in ("action", "src", "dst"):
            if k not in f:
                raise _err(f'acl rule has no "{k}"', node)
        action = _str(f["action"], "action")
        if action != "accept":
            raise _err(f'action="{action}" is not supported (only "accept")', f["action"])
        src = self.src(f["src"], "src", grant=False)
        proto = self.proto(_str(f["proto"], "proto"), f["proto"]) if "proto" in f else None
        rules: list[Rule] = []
        plain: list[Rule] = []
        for text, n in _strs(f["dst"], "dst"):
            alias, ports = self.dst_port(text, n)
            if proto is not None and proto not in _PORTED and ports != ((0, 65535),):
                raise _err(f'protocol {proto} takes no ports; use ":*"', n)
            r = Rule(src, (alias,), (proto,) if proto else (), ports, at=n.at)
            self.check_self(src, r.dst, n, grant=False)
            # aclToGrants: non-self destinations first.
            (rules if alias.kind == "autogroup" and alias.name == "self" else plain).append(r)
        return plain + rules

    def grant(self, node: JNode) -> list[Rule]:
        f = _fields(node, ("src", "dst", "ip", "app", "via", "srcPosture"), "grant")
        for k in ("src", "dst"):
            if k not in f:
                raise _err(f'grant has no "{k}"', node)
        src = self.src(f["src"], "src", grant=True)
        dst = []
        for text, n in _strs(f["dst"], "dst"):
            a = self.alias(text, n)
            self.check_dst(a, n)
            if a.kind == "prefix" and a.prefix is not None and a.prefix.prefixlen == 0:
                raise _err(f'"{text}" as a grant destination: use * or autogroup:internet', n)
            dst.append(a)
        dsts = tuple(dst)
        self.check_self(src, dsts, node, grant=True)
        if "srcPosture" in f:
            self.warnings.append(
                f"grant at {node.at}: srcPosture is ignored; access is wider than written"
            )
        via: list[str] = []
        if "via" in f:
            for text, n in _strs(f["via"], "via"):
                a = self.alias(text, n)
                if a.kind != "tag":
                    raise _err(f'via takes tags only, not "{text}"', n)
                via.append(text)
        caps: list[tuple[str, str]] = []
        if "app" in f:
            app = f["app"]
            if not isinstance(app.value, dict):
                raise _err("app must be an object", app)
            for name, vals in app.value.items():
                if not _CAP_RE.fullmatch(name):
                    raise _err(f'bad capability name "{name}" (want domain/path)', vals)
                if name.startswith("tailscale.com/") and name not in _TS_CAP_ALLOW:
                    raise _err(f'capability "{name}" is reserved', vals)
                _list(vals, f'app "{name}"')
                caps.append((name, json.dumps(vals.plain(), sort_keys=True)))
            if caps and any(d.kind == "autogroup" and d.name == "internet" for d in dsts):
                raise _err("an app grant cannot target autogroup:internet", app)
        ip_entries = _strs(f["ip"], "ip") if "ip" in f else []
        if not ip_entries and not caps:
            raise _err("ip and app can not both be empty", node)
        rules: list[Rule] = []
        if caps:
            rules.append(Rule(src, dsts, (), (), tuple(caps), tuple(via), node.at))
        by_proto: dict[int, list[tuple[int, int]]] = {}
        for text, n in ip_entries:
            pname, colon, ports = text.rpartition(":")
            if not colon:
                pname, ports = "", text
            elif not pname:
                raise _err(f'bad ip entry "{text}"', n)
            proto = self.proto(pname, n) if pname else 0
            if pname and not ports:
                raise _err(f'bad ip entry "{text}"', n)
            if not colon and text in PROTOCOLS:
                raise _err(f'"{text}" needs ports: "{text}:*"', n)
            pr = self.ports(ports, n)
            if proto and proto not in _PORTED and pr != ((0, 65535),):
                raise _err(f'protocol "{pname}" takes no ports; use "{pname}:*"', n)
            by_proto.setdefault(proto or 0, []).extend(pr)
        for proto, ports_list in by_proto.items():
            protos = (proto,) if proto else ()
            rules.append(Rule(src, dsts, protos, tuple(ports_list), (), tuple(via), node.at))
        return rules

    def test(self, node: JNode) -> PolicyTest:
        f = _fields(node, ("src", "proto", "accept", "deny"), "test")
        if "src" not in f:
            raise _err('test has no "src"', node)
        if "accept" not in f and "deny" not in f:
            raise _err("test needs accept or deny", node)
        src = self.alias(_str(f["src"], "src"), f["src"])
        proto = 6
        if "proto" in f:
            p = _str(f["proto"], "proto")
            if p not in ("", "tcp", "udp", "sctp"):
                raise _err(f'bad test protocol "{p}"', f["proto"])
            proto = PROTOCOLS.get(p, 6)
        lists = []
        for key in ("accept", "deny"):
            out = []
            for text, n in _strs(f[key], key) if key in f else []:
                alias, ports = self.dst_port(text, n)
                if len(ports) != 1 or ports[0][0] != ports[0][1]:
                    raise _err(f'test destination "{text}" needs one port', n)
                if alias.kind == "autogroup" and alias.name == "internet":
                    raise _err("tests cannot target autogroup:internet", n)
                if alias.prefix is not None and alias.prefix.num_addresses != 1:
                    raise _err(f'test destination "{text}" must be one address, not a CIDR', n)
                out.append((alias, ports[0][0]))
            lists.append(tuple(out))
        return PolicyTest(src, proto, lists[0], lists[1], node.at)

    def ssh(self, node: JNode) -> SSHRule:
        keys = ("action", "src", "dst", "users", "checkPeriod", "acceptEnv")
        f = _fields(node, keys, "ssh rule")
        for k in ("action", "src", "dst", "users"):
            if k not in f:
                raise _err(f'ssh rule has no "{k}"', node)
        action = _str(f["action"], "action")
        if action not in ("accept", "check"):
            raise _err(f'bad ssh action "{action}"', f["action"])
        src = self.src(f["src"], "src", grant=False)
        dst = []
        for text, n in _strs(f["dst"], "dst"):
            a = self.alias(text, n)
            self.check_dst(a, n)
            dst.append(a)
        users = []
        for text, n in _strs(f["users"], "users"):
            if text.startswith("autogroup:") and text != "autogroup:nonroot":
                raise _err(f'bad ssh user "{text}"', n)
            users.append(text)
        for k in ("checkPeriod",):
            if k in f:
                _str(f[k], k)
        if "acceptEnv" in f:
            _strs(f["acceptEnv"], "acceptEnv")
        return SSHRule(action, src, tuple(dst), tuple(users))

    def policy(self, root: JNode) -> Policy:
        f = _fields(root, TOP_KEYS, "policy")
        for key in ("postures", "defaultSrcPosture"):
            if key in f:
                self.warnings.append(f"{key} is ignored; access is wider than written")
        if "groups" in f:
            g = f["groups"]
            if not isinstance(g.value, dict):
                raise _err("groups must be an object", g)
            for name, members in g.value.items():
                if not name.startswith("group:") or len(name) == 6:
                    raise _err(f'bad group name "{name}"', members)
                users = []
                for text, n in _strs(members, name):
                    if "@" not in text:
                        raise _err(f'group members must be users, not "{text}"', n)
                    users.append(text)
                self.groups[name] = tuple(users)
        if "hosts" in f:
            h = f["hosts"]
            if not isinstance(h.value, dict):
                raise _err("hosts must be an object", h)
            for name, val in h.value.items():
                if not name or "@" in name or ":" in name or name == "*":
                    raise _err(f'bad host name "{name}"', val)
                self.hosts[name] = parse_prefix(_str(val, "host"), val, "host address")
        if "tagOwners" in f:
            t = f["tagOwners"]
            if not isinstance(t.value, dict):
                raise _err("tagOwners must be an object", t)
            for name, val in t.value.items():
                if not _TAG_RE.fullmatch(name):
                    raise _err(f'bad tag "{name}"', val)
                self.tag_owners[name] = ()
            for name, val in t.value.items():
                owners = []
                for text, n in _strs(val, name):
                    if text == "autogroup:admin":  # as Tailscale accepts (Headscale refuses)
                        self.warnings.append(
                            f"tagOwners {name}: autogroup:admin at {n.at} matches no user (there"
                            " are no user roles): only an admin can apply the tag (nodes tag, a"
                            " tagged pre-auth key); a node cannot request it"
                        )
                        continue
                    a = self.alias(text, n)
                    if a.kind not in ("user", "group", "tag"):
                        raise _err(f'tag owners must be users, groups or tags, not "{text}"', n)
                    owners.append(a)
                self.tag_owners[name] = tuple(owners)
        rules: list[Rule] | None = None
        if "acls" in f:
            rules = [r for n in _list(f["acls"], "acls") for r in self.acl(n)]
        if "grants" in f:
            rules = (rules or []) + [r for n in _list(f["grants"], "grants") for r in self.grant(n)]
        route_approvers: list[tuple[IPPrefix, tuple[Alias, ...]]] = []
        exit_approvers: tuple[Alias, ...] = ()
        if "autoApprovers" in f:
            aa = _fields(f["autoApprovers"], ("routes", "exitNode"), "autoApprovers")
            if "routes" in aa:
                r = aa["routes"]
                if not isinstance(r.value, dict):
                    raise _err("autoApprovers.routes must be an object", r)
                for cidr, appr in r.value.items():
                    pfx = parse_prefix(cidr, appr, "route")
                    route_approvers.append((pfx, self.src(appr, "approvers", grant=False)))
            if "exitNode" in aa:
                exit_approvers = self.src(aa["exitNode"], "exitNode", grant=False)
        attrs = []
        for n in _list(f["nodeAttrs"], "nodeAttrs") if "nodeAttrs" in f else []:
            na = _fields(n, ("target", "attr", "ipPool"), "nodeAttrs entry")
            target = tuple(self.alias(t, tn) for t, tn in _strs(na.get("target", n), "target"))
            attr = tuple(a for a, _ in _strs(na["attr"], "attr")) if "attr" in na else ()
            for p, pn in _strs(na["ipPool"], "ipPool") if "ipPool" in na else []:
                parse_prefix(p, pn)
            attrs.append(NodeAttr(target, attr))
        tests = tuple(self.test(n) for n in _list(f["tests"], "tests")) if "tests" in f else ()
        ssh = tuple(self.ssh(n) for n in _list(f["ssh"], "ssh")) if "ssh" in f else ()
        if ssh:
            self.warnings.append(
                "ssh rules are stored but not enforced: Tailscale SSH is not served"
            )
        if "sshTests" in f:
            _list(f["sshTests"], "sshTests")
            self.warnings.append("sshTests are not evaluated yet")
        rcp = False
        if "randomizeClientPort" in f:
            v = f["randomizeClientPort"]
            if not isinstance(v.value, bool):
                raise _err("randomizeClientPort must be true or false", v)
            rcp = v.value
        return Policy(
            rules=None if rules is None else tuple(rules),
            groups=self.groups, tag_owners=self.tag_owners, hosts=self.hosts,
            route_approvers=tuple(route_approvers), exit_approvers=exit_approvers,
            node_attrs=tuple(attrs), tests=tests, ssh=ssh, randomize_client_port=rcp,
            warnings=tuple(self.warnings), idp_groups=tuple(self.idp_refs),
        )  # fmt: skip


def parse_policy(text: str | bytes, *, idp_groups: bool = False) -> Policy:
    """Validate a policy text. An empty (or all-whitespace/comment) text is ``{}``.

    ``idp_groups``: a ``group:NAME`` the policy uses but does not define is not an error but
    the identity provider's group NAME (:attr:`Policy.idp_groups`)."""
    if isinstance(text, bytes) and len(text) <= (1 << 20):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(f"policy is not UTF-8 (byte {e.start})") from None
    try:
        root = parse_hujson(text)
    except PolicyError as e:
        if "unexpected end of input" in str(e) and _blank(text):
            return Policy()
        raise
    return _Validator(idp_groups).policy(root)


def _blank(text: str | bytes) -> bool:
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    s = re.sub(r"//[^\n]*|/\*.*?\*/", "", s, flags=re.S)
    return not s.strip()
