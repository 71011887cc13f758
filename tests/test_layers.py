"""The package's layers import only the layers below them, as README's "How it works" draws.

A layer that reaches up (the store importing the engine, the engine the daemon) ties the
lower layer to the upper one's life and makes the tree lie about the architecture; the
sandbox on the daemon's runtime path would put test code into production.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tokend

PACKAGE = Path(tokend.__file__).parent
SHARED = {"model", "names", "formats", "errors", "timing", "log", "factorial"}
"""Modules at the top of the package that every layer may import."""
LAYERS = ["config", "oauth", "store", "engine", "daemon", "cli", "sandbox"]
"""Bottom first: each may import the shared modules and the layers before it."""
ALSO_ALLOWED = {("cli", "sandbox")}
"""``tokend sandbox`` and ``tokend demo`` start the sandbox: the CLI may import it."""


def _imports(path: Path) -> set[str]:
    """The ``tokend`` subpackages and top-level modules that ``path`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name.split(".")[1] for name in names if name.startswith("tokend."))
    return found


def test_every_layer_imports_only_the_shared_modules_and_the_layers_below_it() -> None:
    upward = []
    for layer in LAYERS:
        below = set(LAYERS[:LAYERS.index(layer)])
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for target in _imports(path) - {layer} - SHARED - below:
                if (layer, target) not in ALSO_ALLOWED:
                    upward.append(f"{path.relative_to(PACKAGE.parent)} imports tokend.{target}")
    assert upward == []


def test_the_shared_modules_import_no_layer_but_oauth() -> None:
    """The vocabulary every layer shares depends on no layer (the seed client
    ``tokend.factorial`` sends the requests ``tokend.oauth`` builds)."""
    reaching = [f"{name}.py imports tokend.{target}"
                for name in sorted(SHARED)
                for target in _imports(PACKAGE / f"{name}.py") & set(LAYERS)
                if (name, target) != ("factorial", "oauth")]
    assert reaching == []
