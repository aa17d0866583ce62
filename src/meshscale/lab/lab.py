"""The network lab: an "internet" of namespaces, NAT routers and the hosts behind them.

    (ns <run>-inet)  bridge br0 203.0.113.1/24 2001:db8:1::1/64     <- the lab internet
        | p<i> veth                      | p<j> veth
    (ns <run>-a) eth0 203.0.113.10       (ns <run>-nat1) eth0 203.0.113.11   (WAN, masquerade)
                                                          lan0 10.1.0.1/24  (bridge)
                                                            | l<k> veth
                                                          (ns <run>-b) eth0 10.1.0.2

Nothing connects to the root namespace: no veth leaves the lab and the internet namespace does
not forward, so the only traffic is between lab namespaces. See README.md for the address plan.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from meshscale.lab import impair, netns, owner
from meshscale.lab.insocket import socket_in_netns
from meshscale.lab.nat import NatKind, nat_ruleset
from meshscale.lab.proc import Proc, run_bounded

INTERNET_V4 = IPv4Network("203.0.113.0/24")  # RFC 5737 TEST-NET-3
INTERNET_V6 = IPv6Network("2001:db8:1::/64")  # RFC 3849 documentation prefix
INTERNET_GW4 = INTERNET_V4[1]
INTERNET_GW6 = INTERNET_V6[1]
FIRST_PUBLIC = 10  # 203.0.113.10 is the first address handed out.
MAX_ROUTERS = 250  # LANs are 10.1.0.0/24 .. 10.250.0.0/24.

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,30}$")
_RESERVED_NAMES = {"inet"}
# Every namespace gets these before any interface exists: DAD would delay IPv6 addresses by
# about a second, and only routers forward.
_BASE_SYSCTLS = (
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv4.ip_forward=0",
    "net.ipv6.conf.all.forwarding=0",
)
_HOSTS_HEADER = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
MAX_CLAIM_ATTEMPTS = 20


class Host:
    """A network namespace in the lab. Processes run in it through `ip netns exec`."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        ns: str,
        ip: IPv4Address,
        ip6: IPv6Address | None,
        behind: Router | None = None,
    ) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.ip = ip
        self.ip6 = ip6
        self.behind = behind

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ns={self.ns} ip={self.ip}>"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` in this namespace (for callers that manage processes)."""
        return netns.exec_argv(self.ns, argv)

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> socket.socket:
        """A socket created in this namespace, usable from any thread of this process."""
        return socket_in_netns(self.ns, family, type, proto)

    def set_loss(self, percent: float, iface: str = "eth0") -> None:
        """Drop `percent`% of packets leaving `iface` at random (0 removes the loss)."""
        impair.set_loss(self.ns, percent, iface)

    def set_rate(self, rate: str | None, iface: str = "eth0") -> None:
        """Limit egress of `iface` to `rate` ("10mbit"); None removes the limit."""
        impair.set_rate(self.ns, rate, iface)

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_name: str | None = None,
        cwd: Path | str | None = None,
    ) -> Proc:
        """Start `argv` in the background; output goes to lab.workdir/<log_name>.log.

        `env` is added to the current environment. The process is stopped at lab teardown.
        """
        return self.lab._spawn(self, argv, env=env, log_name=log_name, cwd=cwd)

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 10.0,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` to completion in this namespace and capture its output as text.

        Bounded by `timeout` even if the command leaves children behind (see run_bounded);
        `env` is added to the current environment.
        """
        return run_bounded(self.exec_argv(argv), timeout=timeout, check=check, input=input, env=env)


class Router(Host):
    """A NAT router: WAN `eth0` on the lab internet, LAN bridge `lan0` for private hosts."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        ns: str,
        public_ip: IPv4Address,
        public_ip6: IPv6Address,
        lan: IPv4Network,
        kind: NatKind,
    ) -> None:
        super().__init__(lab, name, ns, public_ip, public_ip6)
        self.public_ip = public_ip
        self.public_ip6 = public_ip6
        self.lan = lan
        self.lan_ip = lan[1]
        self.kind = kind
        self.next_host = 2  # Next LAN host number: 10.n.0.2, 10.n.0.3, ...


class Lab:
    """A set of network namespaces with a private "internet", owned by this process.

    Use as a context manager; close() also runs from an atexit hook and on SIGTERM.
    """

    def __init__(self, hint: str = "lab", workdir: Path | str | None = None) -> None:
        self._closed = False
        self._namespaces: list[str] = []
        self._procs: list[Proc] = []
        self._hosts: dict[str, Host] = {}
        self._hosts_entries: list[tuple[str, IPv4Address | IPv6Address]] = []
        self._next_public = FIRST_PUBLIC
        self._next_lan = 1
        self._next_link = 0
        self._log_counter = 0
        self._on_close: list[Callable[[], object]] = []
        self._claimed = False
        safe_hint = re.sub(r"[^a-z0-9]", "", hint.lower())[:3]
        for _ in range(MAX_CLAIM_ATTEMPTS):
            name = f"ms{safe_hint}{secrets.token_hex(3)}"
            # A new prefix must not match any existing namespace, even one with a lost claim.
            if any(ns.startswith(name + "-") for ns in netns.netns_list()):
                continue
            if owner.claim(name):
                break
        else:
            raise netns.LabError("could not claim a unique lab name")
        self.name: str = name
        self._claimed = True
        netns.log.info("lab %s: created (owner pid %d)", name, os.getpid())
        _register(self)
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/tmp"))
        else:
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.internet = self._create_internet()
        except BaseException:
            self.close()
            raise

    # ---- context manager ----

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.name} hosts={sorted(self._hosts)} closed={self._closed}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def hosts(self) -> dict[str, Host]:
        """Hosts and routers by name."""
        return dict(self._hosts)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab created (the internet namespace first)."""
        return list(self._namespaces)

    # ---- topology ----

    def _ns_name(self, name: str) -> str:
        if not _NAME_RE.match(name) or name in _RESERVED_NAMES:
            raise ValueError(f"bad lab host name {name!r}")
        if name in self._hosts:
            raise ValueError(f"lab host {name!r} exists")
        return f"{self.name}-{name}"

    def _new_namespace(self, ns: str) -> None:
        if self._closed:
            raise netns.LabError("lab is closed")
        # Recorded before creation so that teardown removes a half-built namespace.
        self._namespaces.append(ns)
        netns.netns_add(ns)
        netns.write_hosts(ns, self._hosts_text())
        netns.write_resolv_conf(ns)
        netns.ns_sysctl(ns, *_BASE_SYSCTLS)
        netns.ns_ip(ns, "link", "set", "lo", "up")

    def _create_internet(self) -> Host:
        ns = f"{self.name}-inet"
        self._new_namespace(ns)
        netns.ns_ip(
            ns, "link", "add", "br0", "type", "bridge",
            "forward_delay", "0", "stp_state", "0", "mcast_snooping", "0",
        )  # fmt: skip
        netns.ns_ip(ns, "addr", "add", f"{INTERNET_GW4}/{INTERNET_V4.prefixlen}", "dev", "br0")
        netns.ns_ip(
            ns, "addr", "add", f"{INTERNET_GW6}/{INTERNET_V6.prefixlen}", "dev", "br0", "nodad"
        )
        netns.ns_ip(ns, "link", "set", "br0", "up")
        return Host(self, "inet", ns, INTERNET_GW4, INTERNET_GW6)

    def _alloc_public(self) -> tuple[IPv4Address, IPv6Address]:
        n = self._next_public
        if n >= INTERNET_V4.num_addresses - 1:
            raise netns.LabError("lab internet is full")
        self._next_public += 1
        return INTERNET_V4[n], INTERNET_V6[n]

    def _link(self, ns_a: str, bridge: str, ns_b: str, prefix: str) -> None:
        """A veth from bridge `bridge` in ns_a to `eth0` in ns_b."""
        port = f"{prefix}{self._next_link}"
        self._next_link += 1
        netns.ns_ip(
            ns_a, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns_b
        )
        netns.ns_ip(ns_a, "link", "set", port, "master", bridge, "up")

    def _attach_public(self, ns: str, ip: IPv4Address, ip6: IPv6Address) -> None:
        self._link(self.internet.ns, "br0", ns, "p")
        netns.ns_ip(ns, "addr", "add", f"{ip}/{INTERNET_V4.prefixlen}", "dev", "eth0")
        netns.ns_ip(ns, "addr", "add", f"{ip6}/{INTERNET_V6.prefixlen}", "dev", "eth0", "nodad")
        netns.ns_ip(ns, "link", "set", "eth0", "up")
        netns.ns_ip(ns, "route", "add", "default", "via", str(INTERNET_GW4), "dev", "eth0")
        netns.ns_ip(ns, "-6", "route", "add", "default", "via", str(INTERNET_GW6), "dev", "eth0")

    def add_public_host(self, name: str) -> Host:
        """A host with a public address on the lab internet."""
        ns = self._ns_name(name)
        ip, ip6 = self._alloc_public()
        self._new_namespace(ns)
        self._attach_public(ns, ip, ip6)
        host = Host(self, name, ns, ip, ip6)
        self._hosts[name] = host
        return host

    def add_nat(self, name: str, kind: NatKind) -> Router:
        """A NAT router with a public WAN address and an empty LAN 10.<n>.0.0/24."""
        ns = self._ns_name(name)
        if self._next_lan > MAX_ROUTERS:
            raise netns.LabError("too many routers")
        lan = IPv4Network(f"10.{self._next_lan}.0.0/24")
        self._next_lan += 1
        ip, ip6 = self._alloc_public()
        self._new_namespace(ns)
        self._attach_public(ns, ip, ip6)
        netns.ns_ip(
            ns, "link", "add", "lan0", "type", "bridge",
            "forward_delay", "0", "stp_state", "0", "mcast_snooping", "0",
        )  # fmt: skip
        netns.ns_ip(ns, "addr", "add", f"{lan[1]}/{lan.prefixlen}", "dev", "lan0")
        netns.ns_ip(ns, "link", "set", "lan0", "up")
        netns.ns_nft(ns, nat_ruleset(kind, "eth0"))
        netns.ns_sysctl(ns, "net.ipv4.ip_forward=1")
        router = Router(self, name, ns, ip, ip6, lan, kind)
        self._hosts[name] = router
        return router

    def add_private_host(self, name: str, behind: Router) -> Host:
        """A host on `behind`'s LAN, IPv4 only, default route via the router."""
        ns = self._ns_name(name)
        if behind.lab is not self:
            raise ValueError("router belongs to another lab")
        if behind.next_host >= behind.lan.num_addresses - 1:
            raise netns.LabError(f"LAN of {behind.name} is full")
        ip = behind.lan[behind.next_host]
        behind.next_host += 1
        self._new_namespace(ns)
        self._link(behind.ns, "lan0", ns, "l")
        netns.ns_ip(ns, "addr", "add", f"{ip}/{behind.lan.prefixlen}", "dev", "eth0")
        netns.ns_ip(ns, "link", "set", "eth0", "up")
        netns.ns_ip(ns, "route", "add", "default", "via", str(behind.lan_ip), "dev", "eth0")
        host = Host(self, name, ns, ip, None, behind=behind)
        self._hosts[name] = host
        return host

    # ---- names ----

    def _hosts_text(self) -> str:
        lines = [_HOSTS_HEADER, *(f"{ip} {name}\n" for name, ip in self._hosts_entries)]
        return "".join(lines)

    def add_hosts_entry(self, name: str, ip: IPv4Address | IPv6Address) -> None:
        """Make `name` resolve to `ip` in every lab namespace, present and future."""
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]*$", name):
            raise ValueError(f"bad host name {name!r}")
        self._hosts_entries.append((name, ip))
        text = self._hosts_text()
        for ns in self._namespaces:
            netns.write_hosts(ns, text)

    # ---- processes ----

    def _spawn(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None,
        log_name: str | None,
        cwd: Path | str | None,
    ) -> Proc:
        if self._closed:
            raise netns.LabError("lab is closed")
        if log_name is None:
            self._log_counter += 1
            log_name = f"{host.name}-{Path(argv[0]).name}-{self._log_counter}"
        proc = Proc(
            host.exec_argv(argv), log_path=self.workdir / f"{log_name}.log", env=env, cwd=cwd
        )
        self._procs.append(proc)
        return proc

    def describe(self) -> str:
        """A table of the lab's hosts and addresses, for logs and the demo (`scripts/lab`)."""
        rows = [f"lab {self.name}  workdir {self.workdir}"]
        for h in self._hosts.values():
            if isinstance(h, Router):
                rows.append(
                    f"  {h.name:<12} router {h.kind.value:<9} wan {h.public_ip} {h.public_ip6}"
                    f"  lan {h.lan}"
                )
            elif h.behind is not None:
                rows.append(f"  {h.name:<12} private behind {h.behind.name}  {h.ip}")
            else:
                rows.append(f"  {h.name:<12} public  {h.ip} {h.ip6}")
        rows += [f"  {name:<12} hosts-entry {ip}" for name, ip in self._hosts_entries]
        return "\n".join(rows)

    # ---- teardown ----

    def on_close(self, fn: Callable[[], object]) -> None:
        """Call `fn` at teardown, after every process is stopped (last registered, first run).

        For quick cleanups outside the namespaces, e.g. removing a short socket directory.
        Exceptions are swallowed so that teardown always completes.
        """
        self._on_close.append(fn)

    def close(self) -> None:
        """Stop every process, delete every namespace and /etc/netns dir. Idempotent."""
        if self._closed:
            return
        self._closed = True
        netns.log.info("lab %s: closing (%d processes)", self.name, len(self._procs))
        try:
            for proc in self._procs:
                with contextlib.suppress(Exception):
                    proc.terminate()
            for proc in reversed(self._procs):
                with contextlib.suppress(Exception):
                    proc.stop()
            # Routers and hosts before the internet, so veth peers vanish with their owner.
            for ns in reversed(self._namespaces):
                with contextlib.suppress(Exception):
                    owner.destroy_namespace(ns)
            for fn in reversed(self._on_close):
                with contextlib.suppress(Exception):
                    fn()
        finally:
            if self._claimed and not any(ns in netns.netns_list() for ns in self._namespaces):
                owner.release(self.name)
            _unregister(self)


# ---- process-wide teardown hooks ----

_open_labs: list[Lab] = []
_hooks_lock = threading.Lock()
_hooks_installed = False


def _close_all() -> None:
    for lab in _open_labs[:]:  # close() removes from the list.
        with contextlib.suppress(Exception):
            lab.close()


def _on_sigterm(prev: signal._HANDLER) -> signal._HANDLER:
    def handler(signum: int, frame: types.FrameType | None) -> None:
        _close_all()
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_IGN:
            return
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    return handler


def _register(lab: Lab) -> None:
    global _hooks_installed
    with _hooks_lock:
        _open_labs.append(lab)
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_close_all)
        # signal.signal works only in the main thread; elsewhere atexit and close() remain.
        if threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, _on_sigterm(prev))


def _unregister(lab: Lab) -> None:
    with _hooks_lock, contextlib.suppress(ValueError):
        _open_labs.remove(lab)
