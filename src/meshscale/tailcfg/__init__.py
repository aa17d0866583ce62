"""meshscale.tailcfg."""
