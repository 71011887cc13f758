"""How the YAML reader tells what a scalar is: its tag, as PyYAML resolves it, and its value.

Apart from the reader's pass (:mod:`tokend.config.events`), which applies these to every
scalar, so that ``tokend token``'s scan for ``state_dir`` (:mod:`tokend.config.quick`)
applies them too without the reader's frames: a value it finds is the one the daemon reads.
Needs PyYAML only.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import MappingStartEvent, SequenceStartEvent
from yaml.nodes import ScalarNode

STR = "tag:yaml.org,2002:str"
MERGE = "tag:yaml.org,2002:merge"
DEFAULT_TAGS: dict[type, tuple[str | None, ...]] = {
    MappingStartEvent: ("tag:yaml.org,2002:map", None, "!"),
    SequenceStartEvent: ("tag:yaml.org,2002:seq", None, "!")}
NOT_CONSTRUCTED = (yaml.YAMLError, ValueError, TypeError, KeyError, OverflowError)
"""What :func:`scalar_value` raises for a value its tag refuses."""


def scalar_tag(event: Any, resolvers: Any, loader: Any) -> str:
    """The tag of the scalar ``event``: its own, else the one its plain text resolves to
    (``resolvers`` are ``loader.yaml_implicit_resolvers``)."""
    tag: str | None = event.tag
    if tag is not None and tag != "!":
        return tag
    value: str = event.value
    if not event.implicit[0] or (value[:1] not in resolvers and value):
        return STR  # quoted, or no implicit type starts with this character
    resolved: str = loader.resolve(ScalarNode, value, event.implicit)
    return resolved


def scalar_value(loader: Any, tag: str, event: Any) -> Any:
    """The value of the scalar ``event`` as ``tag`` constructs it; raises one of
    :data:`NOT_CONSTRUCTED`, whose message may quote the value (a secret, perhaps)."""
    return loader.construct_object(ScalarNode(tag, event.value, style=event.style))
