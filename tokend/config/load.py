"""Load the YAML configuration into the frozen runtime values of :mod:`tokend.model`.

Three steps, so each error can say exactly where it is:

1. :mod:`tokend.config.reader` reads the file (refusing duplicate keys, which
   YAML would silently drop); :mod:`tokend.config.document` can then tell
   where any key or value was written;
2. pydantic checks the shape (:mod:`tokend.config.schema`, private to this
   layer: pydantic never reaches the rest of tokend), with
   ``TOKEND_STATE_DIR`` laid over the file's ``state_dir``;
3. :class:`~tokend.config.build.Builder` layers ``defaults`` → application →
   token, reads secrets, resolves owners and groups, and finds duplicates
   across the whole file.

Every error of a step is collected and raised as one ConfigError, one per
line in file order, ``file:line:col: key.path: message`` (step 3 runs only
once the shape is right). No message ever quotes a value from the file.

pydantic-settings is not used: its documented API cannot give located errors.
Its YAML source reads the file with ``yaml.safe_load``, which keeps the last
of two equal keys, knows no line numbers and takes 0.9 s at 10,000 tokens
(libyaml's events: 0.06 s), so the file would be read twice, once to load and
once to locate; its environment source reads ``os.environ`` only (``environ``
here is an argument) and would take any field as JSON; its errors do not say
which source a value came from. One variable, ``TOKEND_STATE_DIR``, is the
whole need (:func:`~tokend.config.build.environment_overrides`).

A reload passes the config it replaces as ``previous``: :mod:`tokend.config.reread`
then validates only the tokens whose text changed.
"""

from __future__ import annotations

import difflib
import gc
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from tokend.config.build import Builder, Inherited, environment_overrides
from tokend.config.document import Problems, parse_document, read_text
from tokend.config.quick import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, default_config_path
from tokend.config.reader import KeyPath
from tokend.config.reread import Reread, reread, reuse
from tokend.config.schema import Settings, Token, known_keys
from tokend.errors import ConfigError
from tokend.model import ApplicationSpec, Config, TokenSpec


def load_config(path: Path, *, environ: Mapping[str, str] | None = None,
                previous: Config | None = None) -> Config:
    """Read, validate and resolve the configuration at ``path``.

    ``environ`` (default ``os.environ``) supplies ``TOKEND_*`` overrides,
    ``STATE_DIRECTORY``, ``CREDENTIALS_DIRECTORY`` and ``client_secret_env``
    variables. Raises ConfigError listing every problem found.

    ``previous``, the config this one replaces, makes a reload cheap: each
    application and token whose spec is unchanged is ``previous``'s very object,
    and the tokens of an edit confined to token items are the only ones read
    and validated again. The result, errors included, is what a full load gives.
    """
    env = os.environ if environ is None else environ
    with _collector_paused():
        text, mode = read_text(path)
        if previous is not None:
            config = reread(path, text, mode, env, previous)
            if config is not None:
                return config
        config = _load(path, text, mode, env)
        return config if previous is None else reuse(config, previous)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep Python's cycle collector still while a load allocates its objects.

    A load creates a few objects per value of the file and frees none, so the
    collector's full passes find nothing while they rescan an ever larger heap:
    at 100,000 tokens they took 2 s of a 5.5 s load. Loads make no cycles
    worth collecting, and the collector resumes as soon as the load is done.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _load(path: Path, text: str, mode: int, env: Mapping[str, str]) -> Config:
    document, data = parse_document(str(path), text, mode)
    problems = Problems(document)
    overrides = environment_overrides(env)
    lists = _token_lists(data)
    settings = _validate(data, problems, overrides)
    del data  # what is left of it is in the token lists, freed item by item
    shaped = settings is not None
    # The specs are built while the tokens are validated, each token's model dropped as soon
    # as its spec exists: a large file's load never holds its models and its specs at once.
    # Problems the building finds count only if the shape turns out right (step 3).
    report = _Deferred(problems)
    builder = Builder(path, report, env)
    applications: dict[str, ApplicationSpec] = {}
    inherited: dict[str, Inherited] = {}
    if settings is not None:
        builder.retry(("defaults",), settings.defaults)
        for name, app in settings.applications.items():
            applications[name], inherited[name] = builder.application(name, app, settings.defaults)
    tokens: list[TokenSpec] = []
    offsets: dict[str, int] = {}
    for name in lists if settings is None else settings.applications:
        offsets[name] = len(tokens)
        where: KeyPath = ("applications", name, "tokens")
        for index, token in _validated(lists.get(name, []), where, problems):
            shaped = shaped and token is not None
            if shaped and settings is not None and token is not None:
                app = settings.applications[name]
                tokens.append(builder.token(name, token, (*where, index), inherited[name], app,
                                            settings.defaults))
    if not shaped or settings is None:
        problems.check()
        raise AssertionError  # unreachable: a shape error was reported
    defaults = settings.defaults
    concurrency = {} if defaults.concurrency is None else {"concurrency": defaults.concurrency}
    config = Config(source=path, state_dir=builder.state_dir(settings, overrides),
                    applications=applications, tokens=tuple(tokens),
                    warnings=tuple(builder.warnings), metrics=builder.metrics(settings),
                    store=builder.store(settings), **concurrency)
    report.replay()
    problems.check()
    return replace(config, reread=Reread.of(config, document, settings, overrides=overrides,
                                            offsets=offsets, builder=builder))


def _token_lists(data: dict[str, Any]) -> dict[str, list[Any]]:
    """Every application's ``tokens:`` list, taken out of ``data`` (its application left with
    none), for :func:`_validated` to go through one item at a time."""
    applications = data.get("applications")
    if type(applications) is not dict:
        return {}
    lists: dict[str, list[Any]] = {}
    for name, app in applications.items():
        if type(app) is dict and type(app.get("tokens")) is list:
            lists[name] = app["tokens"]
            applications[name] = {**app, "tokens": []}  # a copy: YAML may share it (an alias)
    shared = {id(items) for items in lists.values()}
    if len(shared) < len(lists):
        return {name: list(items) for name, items in lists.items()}  # each freed on its own
    return lists


def _validated(items: list[Any], where: KeyPath, problems: Problems) -> Iterator[
        tuple[int, Token | None]]:
    """Each item of ``items`` as a model, ``None`` when it is refused (the errors reported);
    an item is dropped from ``items`` once it is validated."""
    for index, item in enumerate(items):
        items[index] = None
        try:
            yield index, Token.model_validate(item)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                _report({**error, "loc": (*where, index, *error["loc"])}, problems, {})
            yield index, None


def _validate(data: dict[str, Any], problems: Problems,
              overrides: Mapping[str, str]) -> Settings | None:
    """The settings without their tokens, or ``None`` when they are refused (the errors
    reported)."""
    # Top-level x-* keys hold anchors for the rest of the file (as in docker compose).
    data = {key: value for key, value in data.items() if not key.startswith("x-")}
    misplaced = _settings_as_applications(data.get("applications"))
    for name in misplaced:
        problems.add(("applications", name), _APPLICATION_SETTING, key=True)
    if misplaced:
        data["applications"] = {name: app for name, app in data["applications"].items()
                                if name not in misplaced}
    try:
        return Settings.model_validate({**data, **overrides})
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            _report(error, problems, overrides)
        return None


class _Deferred:
    """The builder's reporter until the shape of every token is known to be right."""

    def __init__(self, problems: Problems) -> None:
        self._problems = problems
        self.source, self.mode, self.plain = problems.source, problems.mode, problems.plain
        self.location, self.mark = problems.location, problems.mark
        self._found: list[tuple[KeyPath, str, bool]] = []

    def add(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        self._found.append((path, message, key))

    def replay(self) -> None:
        for path, message, key in self._found:
            self._problems.add(path, message, key=key)


def _report(error: ErrorDetails, problems: Problems, overrides: Mapping[str, str]) -> None:
    """Turn one pydantic error into a located message that never shows the input."""
    loc: KeyPath = tuple(error["loc"])
    location = f"$TOKEND_{loc[0]}".upper() if loc and loc[0] in overrides else None
    kind = error["type"]
    if kind == "missing":
        problems.add(loc, "required key is missing", anchor=loc[:-1], key=True, location=location)
    elif kind == "extra_forbidden":
        problems.add(loc, _unknown_key(loc), key=True, location=location)
    elif loc and loc[-1] == "[key]":
        problems.add(loc[:-1], _describe(error), key=True, location=location)
    else:
        problems.add(loc, _describe(error), location=location)


_EXPECTED = {"string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
             "model_type": "a mapping", "float_type": "a number", "int_type": "a whole number",
             "int_from_float": "a whole number", "tuple_type": "a list",
             "bool_type": "true or false"}


def _describe(error: ErrorDetails) -> str:
    if error["type"] == "value_error":
        return str(error.get("ctx", {}).get("error", "is not valid"))
    expected = _EXPECTED.get(error["type"])
    if expected is None:
        return error["msg"]
    value = error["input"]
    if value is None:
        return f"is empty; it must be {expected}"
    kind = ("true/false" if isinstance(value, bool)
            else "a number" if isinstance(value, int)
            else "a decimal number" if isinstance(value, float)
            else "text" if isinstance(value, str)
            else "a mapping" if isinstance(value, dict)
            else "a list" if isinstance(value, list)
            else "another kind of value")
    scalar = isinstance(value, bool | int | float)
    quote = "; quote it" if expected == "a string" and scalar else ""
    if expected == "a mapping" and isinstance(value, list) and value and all(
            isinstance(item, dict) for item in value):
        quote = "; remove the '- ' in front of its keys"  # a list of mappings: "- key: value"
    return f"must be {expected}, not {kind}{quote}"


# A key indented too little or too much is still valid YAML: it just lands in another
# mapping, where pydantic calls it unknown, or, one level under ``applications:``, takes it
# for the name of an application. These hints say where the key belongs, so the message
# leads to the line's indentation.
_LEVELS: tuple[tuple[str, KeyPath], ...] = (
    ("the top level", ()),
    ("defaults", ("defaults",)),
    ("an application", ("applications", "")),
    ("a token (an item under tokens:)", ("applications", "", "tokens", 0)),
    ("an output (an item under outputs:)", ("applications", "", "tokens", 0, "outputs", 0)),
    ("retry", ("defaults", "retry")),
    ("metrics", ("metrics",)),
)
_APPLICATION_SETTING = ("is an application setting, not an application: indent it under its "
                       "application, in line with client_id")


def _unknown_key(path: KeyPath) -> str:
    """The message for an unknown key: where it belongs if it is known elsewhere, else a typo."""
    key = str(path[-1])
    places = [place for place, level in _LEVELS if key in known_keys(level)]
    if places:
        where = " or ".join(filter(None, (", ".join(places[:-1]), places[-1])))
        return f"unknown key here; {key} belongs in {where}: check its indentation"
    close = difflib.get_close_matches(key, known_keys(path[:-1]), n=1, cutoff=0.6)
    return f"unknown key; did you mean {close[0]}?" if close else "unknown key"


def _settings_as_applications(applications: Any) -> list[str]:
    """Names under ``applications:`` that are an application's settings indented too little.

    ``tokens:`` two spaces in reads as an application named ``tokens``. A
    mapping holding application settings is taken for a real application of
    that name; anything else under such a name is a misplaced setting.
    """
    if not isinstance(applications, dict):
        return []
    settings = known_keys(("applications", ""))
    return [name for name, value in applications.items() if name in settings and not (
        isinstance(value, dict) and any(key in settings for key in value))]


__all__ = ["DEFAULT_CONFIG_PATH", "DEFAULT_STATE_DIR", "ConfigError", "default_config_path",
           "load_config"]
