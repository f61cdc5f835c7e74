"""afield: compose, ship, boot and roll back OS images on fleets of field-deployed Linux devices.

This top-level package holds only the version; see DESIGN.md for the map of subpackages.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
