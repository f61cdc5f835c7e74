"""The single place afield imports libostree's GObject bindings."""

from __future__ import annotations

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

__all__ = ["GLib", "Gio", "OSTree"]
