"""meshscale.wgdev."""
