"""Route scenarios in the lab: a LAN behind several routers, and a what-is-my-address web server.

    lan = add_lan(lab, "lan", [ra, rb])   # bridge in ns <run>-lan: 198.51.100.100 (the host),
                                           # ra gets lan0 198.51.100.1, rb lan0 198.51.100.2
    serve_whoami(lan)                      # HTTP :80 answers with the caller's address
    fetch_whoami(client, "198.51.100.100") # that answer, or "" (curl, short timeout)

The LAN host runs no client; the routers forward to it (ip_forward on) and, with SNAT, the
answer names the router that carried the request. ``serve_whoami`` on a public host is the
lab internet's ``www``: behind an exit node the answer is the exit node's public address.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Network

from meshscale.lab import netns
from meshscale.lab.lab import Host, Lab
from meshscale.lab.proc import Proc

LAN_PREFIX = IPv4Network("198.51.100.0/24")  # RFC 5737 TEST-NET-2
LAN_HOST_INDEX = 100


def add_lan(lab: Lab, name: str, routers: Sequence[Host],
            prefix: IPv4Network = LAN_PREFIX) -> Host:  # fmt: skip
    """A LAN host (no client) at prefix[100] behind every host in ``routers`` (each gets
    ``lan0`` at prefix[i+1] and forwarding on)."""
    ns = lab._ns_name(name)
    lab._new_namespace(ns)
    netns.ns_ip(ns, "link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0")
    ip = prefix[LAN_HOST_INDEX]
    netns.ns_ip(ns, "addr", "add", f"{ip}/{prefix.prefixlen}", "dev", "br0")
    netns.ns_ip(ns, "link", "set", "br0", "up")
    for i, r in enumerate(routers):
        port = f"r{i}"
        netns.ns_ip(ns, "link", "add", port, "type", "veth", "peer", "name", "lan0", "netns", r.ns)
        netns.ns_ip(ns, "link", "set", port, "master", "br0", "up")
        netns.ns_ip(r.ns, "addr", "add", f"{prefix[i + 1]}/{prefix.prefixlen}", "dev", "lan0")
        netns.ns_ip(r.ns, "link", "set", "lan0", "up")
        netns.ns_sysctl(r.ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    host = Host(lab, name, ns, ip, None)
    lab._hosts[name] = host
    return host


def enable_forwarding(host: Host) -> None:
    netns.ns_sysctl(host.ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")


def serve_whoami(host: Host, port: int = 80) -> Proc:
    proc = host.spawn([sys.executable, "-m", "meshscale.lab.subnet", str(port)],
                      log_name=f"whoami-{host.name}")  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if fetch_whoami(host, "127.0.0.1", port=port):
            return proc
        time.sleep(0.1)
    raise netns.LabError(f"whoami on {host.name} did not start: {proc.log_text()[-500:]}")


def fetch_whoami(client: Host, ip: str, port: int = 80, timeout: float = 2.0) -> str:
    """The address ``ip`` saw us come from, or "" when it could not be reached."""
    res = client.run(["curl", "-s", "-m", f"{timeout:g}", f"http://{ip}:{port}/"],
                     check=False, timeout=timeout + 5)  # fmt: skip
    return res.stdout.strip() if res.returncode == 0 else ""


def wait_whoami(client: Host, ip: str, want: str, timeout: float) -> float:
    """Seconds until ``ip`` sees ``client`` as ``want``; raises LabError after ``timeout``."""
    t0 = time.monotonic()
    got = ""
    while time.monotonic() - t0 < timeout:
        got = fetch_whoami(client, ip, timeout=1.0)
        if got == want:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise netns.LabError(f"{client.name} -> {ip}: seen as {got or 'nothing'!r}, not {want}")


class _Whoami(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: Sequence[str]) -> None:
    port = int(argv[0]) if argv else 80
    ThreadingHTTPServer(("0.0.0.0", port), _Whoami).serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
