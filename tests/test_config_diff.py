"""What a reload has to apply: which tokens a new config adds, removes or changes, and how."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tokend.engine.config_diff import diff_configs
from tokend.model import ApplicationSpec, Config, OutputSpec, Secret, TokenName, TokenSpec

APP = ApplicationSpec("app", "client", Secret("secret"))


def _spec(user: str, *, path: str | None = None, refresh_at: float = 0.75) -> TokenSpec:
    name = TokenName("app", user, "read")
    return TokenSpec(name, outputs=(OutputSpec(Path(path or f"/out/{user}")),),
                     refresh_at=refresh_at)


def _config(*tokens: TokenSpec, app: ApplicationSpec = APP) -> Config:
    return Config(Path("c.yaml"), Path("/state"), {"app": app}, tokens)


def _diff(old: Config | None, new: Config) -> dict[str, list[str]]:
    specs = {} if old is None else {spec.name: spec for spec in old.tokens}
    changes = diff_configs(old, specs, new)
    return {kind: [name.user for name in getattr(changes, kind)]
            for kind in ("added", "removed", "outputs", "settings", "credentials")}


def test_the_first_config_adds_every_token() -> None:
    """Before any config ran, every token is new."""
    new = _config(_spec("a"), _spec("b"))
    assert _diff(None, new) == {"added": ["a", "b"], "removed": [], "outputs": [],
                                "settings": [], "credentials": []}


def test_the_same_specs_change_nothing_whether_reused_or_equal() -> None:
    """A loader that reuses unchanged specs, or one that builds equal ones: nothing to do."""
    old = _config(_spec("a"), _spec("b"))
    equal = _config(_spec("a"), _spec("b"))
    assert not any(_diff(old, old).values())
    assert not any(_diff(old, equal).values())


def test_each_kind_of_change_is_told_apart() -> None:
    """A moved output needs a publish; a new ``refresh_at`` only a new schedule."""
    old = _config(_spec("a"), _spec("b"), _spec("c"), _spec("d"))
    new = _config(_spec("a", path="/moved"), _spec("b", refresh_at=0.5), _spec("c"), _spec("e"))
    assert _diff(old, new) == {"added": ["e"], "removed": ["d"], "outputs": ["a"],
                               "settings": ["b"], "credentials": []}
    assert diff_configs(old, {spec.name: spec for spec in old.tokens}, new).changed == 2


def test_a_changed_application_marks_its_unchanged_tokens() -> None:
    """New client credentials concern every token of the application, not their files."""
    old = _config(_spec("a"), _spec("b", refresh_at=0.5))
    app = dataclasses.replace(APP, client_secret=Secret("rotated"))
    new = _config(_spec("a"), _spec("b", refresh_at=0.6), app=app)
    assert _diff(old, new) == {"added": [], "removed": [], "outputs": [], "settings": ["b"],
                               "credentials": ["a"]}


def test_moving_tokens_around_in_the_file_changes_nothing() -> None:
    """The same tokens in another order: each is compared with its namesake."""
    a, b, c = _spec("a"), _spec("b"), _spec("c")
    assert not any(_diff(_config(a, b, c), _config(c, a, _spec("b"))).values())


def test_a_reused_spec_list_keeps_the_configs_order() -> None:
    """One spec replaced in place: the new config's tokens come out in its own order."""
    old = _config(_spec("a"), _spec("b"), _spec("c"))
    new = _config(old.tokens[0], _spec("b", refresh_at=0.5), old.tokens[2])
    changes = diff_configs(old, {spec.name: spec for spec in old.tokens}, new)
    assert list(changes.specs.values()) == list(new.tokens)
    assert all(changes.specs[spec.name] is spec for spec in new.tokens)
    assert [name.user for name in changes.settings] == ["b"]
