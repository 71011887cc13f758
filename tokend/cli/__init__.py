"""The command line: ``main`` parses and dispatches to ``commands``, one handler per verb.

The handlers call one module per verb family: ``authorize`` and ``listen``
(authorization), ``operator`` (refresh, revoke), ``status``, ``check`` (offline and
``--online``), ``demo``. The top layer: it may import every other layer, the sandbox
included (for ``demo``). Handlers import lazily so ``tokend token`` starts without httpx,
pydantic or structlog.
"""
