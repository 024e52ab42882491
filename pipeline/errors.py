"""The mistakes a command reports in one line, with what to change, before any work starts."""

from __future__ import annotations

__all__ = ["ConfigError", "UsageError"]


class ConfigError(ValueError):
    """A launch-time problem with what the user asked for; the message says what to change."""


class UsageError(ValueError):
    """A flag that is missing, unknown or malformed."""
