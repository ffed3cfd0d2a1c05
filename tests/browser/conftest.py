"""Registers the ``browser`` marker (strict markers are on) for the chat example's tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives headless chromium through playwright-core (needs node, npm)"
    )
