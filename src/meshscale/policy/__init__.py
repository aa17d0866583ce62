"""meshscale.policy."""
