"""``meshscale configure``: tailscale's host-configuration verb.

Upstream's subcommands (cmd/tailscale/cli/configure*.go) each set up something around
tailscaled that meshscale does not ship: a Kubernetes operator's API proxy, a tray app, a
Synology or JetKVM package, macOS system extensions, Tailscale's appliance images. Each is
known here by name and refused with one line saying why, so a command copied from
Tailscale's docs fails clearly instead of as an unknown verb; a misspelt one is a usage error.
"""

from __future__ import annotations

import argparse

from .localclient import CLIError, LocalClient

# subcommand -> (upstream's summary, why meshscale refuses it)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "kubeconfig": (
        "[ALPHA] connect kubectl to a Kubernetes cluster's API server proxy",
        "it needs the Tailscale Kubernetes operator's API server proxy, which meshscale "
        "does not provide",
    ),
    "systray": (
        "[ALPHA] manage the systray client for Linux",
        "meshscale has no system tray client",
    ),
    "synology": (
        "configure Synology to enable outbound connections",
        "meshscale has no Synology DSM package; on other Linux hosts meshscaled.service "
        "(packaging/systemd) grants CAP_NET_ADMIN and opens /dev/net/tun",
    ),
    "synology-cert": (
        "configure Synology with a TLS certificate for your tailnet",
        "meshscale has no Synology DSM package and does not issue HTTPS certificates",
    ),
    "jetkvm": (
        "configure JetKVM to run meshscaled at boot",
        "only for JetKVM devices, which meshscale does not package",
    ),
    "sysext": ("manage the macOS system extension", "macOS only"),
    "mac-vpn": ("manage the macOS VPN configuration", "macOS only"),
    "pve-appliance": (
        "create a Proxmox VE VM running the Tailscale appliance image",
        "it installs Tailscale's signed appliance images, which are not meshscale",
    ),
    "flash-appliance": (
        "write the Tailscale appliance image to a disk",
        "it installs Tailscale's signed appliance images, which are not meshscale",
    ),
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("configure", help="configure the host to enable more features")
    p.set_defaults(run=run, configure_parser=p)
    inner = p.add_subparsers(dest="what", metavar="SUBCOMMAND", parser_class=type(p))
    for name, (summary, _why) in SUBCOMMANDS.items():
        # Upstream's flags are accepted as plain words so the refusal, not "unrecognized
        # arguments", is what the user reads.
        sp = inner.add_parser(name, help=summary, prefix_chars="\x00", add_help=False)
        sp.add_argument("rest", nargs="*", help=argparse.SUPPRESS)


def run(args: argparse.Namespace, client: LocalClient) -> int:
    what = getattr(args, "what", None)
    if what is None:
        names = ", ".join(SUBCOMMANDS)
        raise CLIError(f"configure: which subcommand? ({names}; usage: meshscale configure "
                       "SUBCOMMAND)", code=2)  # fmt: skip
    raise CLIError(f"configure {what} is not supported: {SUBCOMMANDS[what][1]}")
