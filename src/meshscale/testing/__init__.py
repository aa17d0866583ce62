"""meshscale.testing."""
