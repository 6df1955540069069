"""A browser page that may reach only this machine (see tests/browser/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from playwright.sync_api import Page


@dataclass
class OfflinePage:
    page: Page
    blocked: list[str] = field(default_factory=list)  # the non-local requests it tried
