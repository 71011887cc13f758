"""The config layer: the YAML file to frozen specs, with every error located at file:line:col.

Holds the loader (``load``, and ``reread`` for a reload that validates only what an
edit changed), the one YAML reader (``reader``, its pass over the parser's events in
``events``, ``aliases`` and ``frames``, its messages in ``syntax`` and ``hints``), the
document that locates key paths (``document``), the pydantic schema at the boundary
(``schema``), the specs built from it (``build``) and the quick ``state_dir`` scan for
``tokend token`` (``quick``). May import only ``tokend.model``, ``tokend.errors`` and
``tokend.timing``. Kept empty so ``quick`` (which needs only ``reader``) loads without
pydantic.
"""
