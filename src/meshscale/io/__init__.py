"""meshscale.io."""
