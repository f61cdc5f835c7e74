"""Compose stages, one module each, with a JSON schema of its options beside it.

Every module defines ``NAME`` (``afield.<area>.<step>``), ``CHECKPOINT`` (whether the tree after
it is kept in the stage cache) and ``run(ctx, options) -> facts``. The pipeline finds them here
by ``NAME``; adding a stage means adding one module and one schema.
"""
