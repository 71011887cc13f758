"""What to tell an operator whose key sits at the wrong level of config.yaml.

A key indented too little or too much is still valid YAML: it just lands in
another mapping, where pydantic calls it unknown, or, one level under
``applications:``, takes it for the name of an application. These hints say
where the key belongs, so the message leads to the line's indentation.
"""

from __future__ import annotations

import difflib
from typing import Any

from tokend.config.reader import KeyPath
from tokend.config.schema import known_keys

_LEVELS: tuple[tuple[str, KeyPath], ...] = (
    ("the top level", ()),
    ("defaults", ("defaults",)),
    ("an application", ("applications", "")),
    ("a token (an item under tokens:)", ("applications", "", "tokens", 0)),
    ("an output (an item under outputs:)", ("applications", "", "tokens", 0, "outputs", 0)),
    ("retry", ("defaults", "retry")),
    ("metrics", ("metrics",)),
)
APPLICATION_SETTING = ("is an application setting, not an application: indent it under its "
                       "application, in line with client_id")


def unknown_key(path: KeyPath) -> str:
    """The message for an unknown key: where it belongs if it is known elsewhere, else a typo."""
    key = str(path[-1])
    places = [place for place, level in _LEVELS if key in known_keys(level)]
    if places:
        where = " or ".join(filter(None, (", ".join(places[:-1]), places[-1])))
        return f"unknown key here; {key} belongs in {where}: check its indentation"
    close = difflib.get_close_matches(key, known_keys(path[:-1]), n=1, cutoff=0.6)
    return f"unknown key; did you mean {close[0]}?" if close else "unknown key"


def settings_as_applications(applications: Any) -> list[str]:
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
