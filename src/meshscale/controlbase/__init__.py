"""meshscale.controlbase."""
