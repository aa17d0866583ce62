"""Sans-IO MagicDNS resolver: query bytes in, answer bytes or a forward decision out.

Never raises on network input: malformed queries get FORMERR when the header is readable
and are dropped otherwise; every outcome is counted in `stats`.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from meshscale.dns.cache import AnswerCache, Key
from meshscale.dns.config import QUAD100_NAME, QUAD100_V4, QUAD100_V6, IPAddr, ResolverConfig, fqdn

MAX_QUERY = 65535  # a DNS message over TCP can't be larger; anything bigger is garbage
UDP_PLAIN_MAX = 512  # bytes of a UDP answer to a client that sent no EDNS
_NOTIMP_TYPES = frozenset(
    {dns.rdatatype.NS, dns.rdatatype.SOA, dns.rdatatype.AXFR, dns.rdatatype.HINFO}
)


def _is_bonjour(name: str) -> bool:
    """DNS-SD browse names (b._dns-sd._udp.<domain> and kin): tailscaled answers NXDOMAIN."""
    labels = name.split(".")
    return len(labels) >= 3 and labels[1] == "_dns-sd" and labels[2] == "_udp"


def fit_udp(query: bytes, answer: bytes) -> bytes:
    """An answer for a UDP client: TC=1 when it is larger than the client can take (512
    bytes, or its EDNS payload size). The body is not cut, as tailscaled does."""
    if len(answer) <= UDP_PLAIN_MAX:
        return answer  # fits every client: no need to read the query's EDNS size
    limit = UDP_PLAIN_MAX
    try:
        msg = dns.message.from_wire(query)
        if msg.edns >= 0:
            limit = max(UDP_PLAIN_MAX, msg.payload)
    except Exception:  # the query was already answered; a parse failure means no EDNS
        pass
    if len(answer) <= limit or len(answer) < 4:
        return answer
    return answer[:2] + bytes([answer[2] | 0x02]) + answer[3:]


@dataclass(frozen=True, slots=True)
class Answer:
    wire: bytes


@dataclass(frozen=True, slots=True)
class Forward:
    upstreams: tuple[str, ...]
    query: bytes
    key: Key


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


Decision = Answer | Forward | Drop


def _formerr(query: bytes) -> Answer:
    (qid,) = struct.unpack("!H", query[:2])
    # QR=1, opcode copied, RCODE=FORMERR, no sections.
    flags = 0x8000 | (query[2] & 0x78) << 8 | dns.rcode.FORMERR
    return Answer(struct.pack("!HHHHHH", qid, flags, 0, 0, 0, 0))


class Resolver:
    def __init__(
        self, config: ResolverConfig | None = None, cache: AnswerCache | None = None
    ) -> None:
        self.config = config if config is not None else ResolverConfig()
        self._reverse = self.config.reverse()
        self.cache = cache if cache is not None else AnswerCache()  # empty cache is falsy
        self.stats: Counter[str] = Counter()

    def set_config(self, config: ResolverConfig) -> None:
        self.config = config
        self._reverse = config.reverse()

    def handle(self, query: bytes) -> Decision:
        self.stats["queries"] += 1
        if len(query) > MAX_QUERY:
            return self._drop("oversized")
        if len(query) < 12:
            return self._drop("short")
        if query[2] & 0x80:
            return self._drop("not_a_query")  # QR set: a response, don't reflect it
        try:
            msg = dns.message.from_wire(query, ignore_trailing=False)
        except (dns.exception.DNSException, ValueError, IndexError, struct.error, UnicodeError):
            self.stats["malformed"] += 1
            return _formerr(query)
        if msg.opcode() != dns.opcode.QUERY:
            return self._reply(msg, dns.rcode.NOTIMP)
        if len(msg.question) != 1:
            self.stats["malformed"] += 1
            return self._reply(msg, dns.rcode.FORMERR)
        q = msg.question[0]
        name = q.name.to_text().lower()
        if q.rdclass != dns.rdataclass.IN:
            return self._reply(msg, dns.rcode.REFUSED)
        return self._resolve(msg, name, q.rdtype, query)

    def accept_reply(self, fwd: Forward, reply: bytes) -> bytes | None:
        """Validate an upstream reply for `fwd`, cache it, return it (None: ignore it)."""
        try:
            msg = dns.message.from_wire(reply)
        except Exception:  # untrusted upstream bytes: any parse failure means drop
            self.stats["upstream_malformed"] += 1
            return None
        orig_id = struct.unpack("!H", fwd.query[:2])[0]
        q = msg.question[0] if len(msg.question) == 1 else None
        if (
            msg.id != orig_id
            or q is None
            or (q.name.to_text().lower(), q.rdtype, q.rdclass) != fwd.key
        ):
            self.stats["upstream_mismatch"] += 1
            return None
        if not msg.flags & dns.flags.TC and msg.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            ttls = [rr.ttl for rr in msg.answer] or [60]
            self.cache.put(fwd.key, reply, min(ttls))
        self.stats["forwarded_ok"] += 1
        return reply

    # -- internals ---------------------------------------------------------------------
    def _drop(self, reason: str) -> Drop:
        self.stats["dropped_" + reason] += 1
        return Drop(reason)

    def _reply(
        self, msg: dns.message.Message, rcode: dns.rcode.Rcode, authoritative: bool = False
    ) -> Answer:
        resp = dns.message.make_response(msg)
        resp.set_rcode(rcode)
        if authoritative:
            resp.flags |= dns.flags.AA
        resp.flags |= dns.flags.RA
        self.stats["rcode_" + dns.rcode.to_text(rcode)] += 1
        return Answer(resp.to_wire())

    def _resolve(self, msg: dns.message.Message, name: str, rdtype: int, query: bytes) -> Decision:
        cfg = self.config
        if name.endswith(".onion.") or name == "onion." or _is_bonjour(name):
            return self._reply(msg, dns.rcode.NXDOMAIN)  # never leaks to an upstream
        if name == QUAD100_NAME:
            return self._local(msg, name, rdtype, [QUAD100_V4, QUAD100_V6])
        addrs = cfg.hosts.get(name)
        if addrs is not None:
            return self._local(msg, name, rdtype, addrs)
        ptr = self._reverse.get(name)
        if ptr is not None:
            resp = dns.message.make_response(msg)
            resp.flags |= dns.flags.AA | dns.flags.RA
            if rdtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
                resp.answer.append(dns.rrset.from_text_list(name, cfg.ttl, "IN", "PTR", [ptr]))
            self.stats["local"] += 1
            return Answer(resp.to_wire())
        upstreams = self._route(name)
        if upstreams is None:
            self.stats["no_upstream"] += 1
            return self._reply(msg, dns.rcode.SERVFAIL)
        if not upstreams:
            return self._reply(msg, dns.rcode.NXDOMAIN, authoritative=True)
        key: Key = (name, rdtype, dns.rdataclass.IN)
        cached = self.cache.get(key)
        if cached is not None:
            self.stats["cache_hit"] += 1
            return Answer(query[:2] + cached[2:])
        self.stats["forward"] += 1
        return Forward(tuple(upstreams), query, key)

    def _local(
        self, msg: dns.message.Message, name: str, rdtype: int, addrs: list[IPAddr]
    ) -> Answer:
        """A name in the host table: the first address of the asked family (tailscaled
        does not round-robin), NOTIMP for zone types, NOERROR/NODATA for the rest."""
        if rdtype in _NOTIMP_TYPES:
            return self._reply(msg, dns.rcode.NOTIMP)
        resp = dns.message.make_response(msg)
        resp.flags |= dns.flags.AA | dns.flags.RA
        for rtype, ver in ((dns.rdatatype.A, 4), (dns.rdatatype.AAAA, 6)):
            if rdtype in (rtype, dns.rdatatype.ANY):
                first = next((str(a) for a in addrs if a.version == ver), None)
                if first is not None:
                    resp.answer.append(
                        dns.rrset.from_text_list(name, self.config.ttl, "IN", rtype, [first])
                    )
        self.stats["local"] += 1
        return Answer(resp.to_wire())

    def _route(self, name: str) -> list[str] | None:
        """Longest matching split-DNS suffix; else the fallback resolvers; None = nowhere."""
        best: str | None = None
        for suffix in self.config.routes:
            hit = suffix == "." or name == suffix or name.endswith("." + suffix)
            if hit and (best is None or len(suffix) > len(best)):
                best = suffix
        if best is not None:
            return self.config.routes[best]
        return self.config.fallback or None


__all__ = ["Answer", "Decision", "Drop", "Forward", "Resolver", "fit_udp", "fqdn"]
