"""The command line: ``main`` parses and dispatches; one module per verb family.

``authorize`` and ``listen`` (authorization), ``operator`` (refresh, revoke), ``status``
and ``status_fallback``, ``check`` and ``check_online``, ``demo``. The top layer: it may
import every other layer, the sandbox included (for ``demo``). Verbs import lazily so
``tokend token`` starts without httpx, pydantic or structlog.
"""
