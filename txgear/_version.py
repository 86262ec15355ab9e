"""The txgear version, kept in one place for setup.py and the admin C{version} command."""
from __future__ import annotations

__version__ = "0.1.0"
