"""MagicDNS in meshscaled: the forwarding driver, quad-100 on the TUN, the OS configuration."""
