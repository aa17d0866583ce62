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


# scripts/test (and so .ci/run) sets MESHSCALE_NO_SKIPS=1: there every prerequisite is installed,
# so a skipped test means a check did not run, and that must not read as a pass.
if os.environ.get("MESHSCALE_NO_SKIPS") == "1":
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
        outcome = yield
        report = outcome.get_result()
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            report.outcome = "failed"
            report.longrepr = f"skipped under MESHSCALE_NO_SKIPS=1 (scripts/test): {reason}"
