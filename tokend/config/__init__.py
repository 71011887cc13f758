"""The config layer: the YAML file to frozen specs, with every error located at file:line:col.

Holds the loader (``load``), the positioned YAML reader (``events``, ``positions``,
``syntax``, ``hints``), the pydantic schema at the boundary (``schema``) and the quick
``state_dir`` scan for ``tokend token`` (``quick``). May import only ``tokend.model``,
``tokend.errors`` and ``tokend.timing``. Kept empty so ``quick`` loads without pydantic.
"""
