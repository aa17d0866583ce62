"""meshscale.packet."""
