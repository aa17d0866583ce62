"""meshscale.magicsock."""
