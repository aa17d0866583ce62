"""meshscale.cli."""
