"""meshscale.lab."""
