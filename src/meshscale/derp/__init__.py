"""meshscale.derp."""
