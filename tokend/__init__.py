"""tokend keeps OAuth access tokens for the Factorial HR API fresh, forever."""

from __future__ import annotations

__version__ = "0.1.0"
