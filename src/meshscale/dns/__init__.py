"""meshscale.dns."""
