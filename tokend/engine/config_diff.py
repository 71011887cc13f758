"""What a new config changes for the tokens of the running one: all a reload has to apply.

A reload of a large file usually changes one token. Comparing each token's
spec with the one it replaces (by identity first: a loader that reuses the
specs of unchanged tokens makes that the common case, then by value) tells
which tokens need their files published, which only a new schedule, and which
nothing at all, so a reload costs what it changes, not what the file holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tokend.model import Config, TokenName, TokenSpec


@dataclass(frozen=True, slots=True)
class ConfigChanges:
    """The tokens of a new config, sorted by what applying it means for each."""

    specs: dict[TokenName, TokenSpec]
    """Every token of the new config, by name, in the config's order."""
    added: list[TokenName]
    removed: list[TokenName]
    outputs: list[TokenName]
    """Kept tokens whose outputs changed: their files must be published."""
    settings: list[TokenName]
    """Kept tokens whose other settings changed (``refresh_at``, hooks…): files unchanged."""
    credentials: list[TokenName]
    """Kept tokens whose own settings are the same but whose application's changed."""

    @property
    def changed(self) -> int:
        """How many kept tokens changed, in any way."""
        return len(self.outputs) + len(self.settings) + len(self.credentials)


def diff_configs(
    old: Config | None, old_specs: Mapping[TokenName, TokenSpec], new: Config
) -> ConfigChanges:
    """Compare ``new`` with ``old``, whose tokens are ``old_specs`` in its order (``None``:
    nothing ran yet)."""
    apps = set() if old is None else {
        name for name, app in new.applications.items()
        if (was := old.applications.get(name)) is not app and was != app
    }
    added: list[TokenName] = []
    removed: list[TokenName] = []
    replaced = _replaced_in_place(old, new)
    if replaced is None:
        specs = {spec.name: spec for spec in new.tokens}
        added = [name for name in specs if name not in old_specs]
        removed = [name for name in old_specs if name not in specs]
        replaced = [(before, spec) for name, spec in specs.items()
                    if (before := old_specs.get(name)) is not None and before is not spec]
    else:
        specs = dict(old_specs)
        specs.update((spec.name, spec) for _before, spec in replaced)
    outputs: list[TokenName] = []
    settings: list[TokenName] = []
    for before, spec in replaced:
        if before != spec:
            (settings if before.outputs == spec.outputs else outputs).append(spec.name)
    credentials: list[TokenName] = []
    if apps:
        touched = {*added, *outputs, *settings}
        credentials = [name for name in specs if name.app in apps and name not in touched]
    return ConfigChanges(specs, added, removed, outputs, settings, credentials)


def _replaced_in_place(
    old: Config | None, new: Config
) -> list[tuple[TokenSpec, TokenSpec]] | None:
    """The specs ``new`` replaced, when it names the same tokens in the same order (the usual
    edit): found by identity alone, without hashing a single name. ``None`` otherwise."""
    if old is None or len(old.tokens) != len(new.tokens):
        return None
    replaced = [(before, spec) for before, spec in zip(old.tokens, new.tokens, strict=True)
                if before is not spec]
    if any(before.name != spec.name for before, spec in replaced):
        return None
    return replaced
