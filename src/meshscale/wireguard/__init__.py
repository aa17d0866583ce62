"""meshscale.wireguard."""
