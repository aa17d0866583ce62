"""DNSConfig, Resolver, DNSRecord (tailscale tailcfg.DNSConfig, types/dnstype;
docs/protocol/control.md §6.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(slots=True)
class Resolver:
    Addr: str = ""
    BootstrapResolution: list[str] = field(default_factory=list)
    UseWithExitNode: bool = False

    OMIT: ClassVar[frozenset[str]] = frozenset({"Addr", "BootstrapResolution", "UseWithExitNode"})


@dataclass(slots=True)
class DNSRecord:
    Name: str = ""
    Type: str = ""
    Value: str = ""

    OMIT: ClassVar[frozenset[str]] = frozenset({"Type"})


@dataclass(slots=True)
class DNSConfig:
    Resolvers: list[Resolver] = field(default_factory=list)
    # Split DNS; an empty list (never null) means "answer locally" (MagicDNS).
    Routes: dict[str, list[Resolver]] = field(default_factory=dict)
    FallbackResolvers: list[Resolver] = field(default_factory=list)
    Domains: list[str] = field(default_factory=list)
    Proxied: bool = False
    Nameservers: list[str] = field(default_factory=list)
    CertDomains: list[str] = field(default_factory=list)
    ExtraRecords: list[DNSRecord] = field(default_factory=list)
    ExitNodeFilteredSet: list[str] = field(default_factory=list)
    TempCorpIssue13969: str = ""

    OMIT: ClassVar[frozenset[str]] = frozenset(
        {
            "Resolvers", "Routes", "FallbackResolvers", "Domains", "Proxied", "Nameservers",
            "CertDomains", "ExtraRecords", "ExitNodeFilteredSet", "TempCorpIssue13969",
        }
    )  # fmt: skip
