"""The device side."""
