"""The config layer: the YAML file to frozen specs, with every error located at file:line:col.

Holds the loader (``load``, with its messages for misplaced keys, and ``reread`` for a
reload that validates only what an edit changed, with ``edits`` finding what changed),
the one YAML reader (``reader``, its pass over the parser's events in ``events``,
``aliases`` and ``frames``, what a scalar is in ``scalars``, its messages in ``syntax``),
the document that locates key paths (``document``), the pydantic schema at the boundary
(``schema``), the specs built from it (``build``) and, for ``tokend token`` and ``exec``,
the default paths, the ``state_dir`` scan that stops at that key and a token's outputs
(``quick``). May import only ``tokend.model`` (with ``tokend.names``), ``tokend.errors``,
``tokend.timing`` and ``tokend.formats`` (a template's rules). Kept empty so ``quick``
(which needs only the reader) loads without pydantic.
"""
