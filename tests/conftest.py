"""Shared pytest configuration: hypothesis profiles and lab prerequisites."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Default profile stays quick; CI may select "fuzz" (HYPOTHESIS_PROFILE=fuzz) for long runs.
settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile(
    "fuzz", max_examples=100_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
