"""meshscale.control."""
