"""meshscale.node."""
