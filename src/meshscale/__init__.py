"""meshscale: a self-hostable mesh VPN, wire-compatible with Tailscale and WireGuard."""

__version__ = "0.1.0"
