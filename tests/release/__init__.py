"""Tests of :mod:`afield.release`: publishing real OSTree commits and attacks on the metadata."""
