"""meshscale.relay."""
