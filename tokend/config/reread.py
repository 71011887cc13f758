"""A reload that reads and validates only the tokens an edit touched.

At 10,000 tokens a full load takes about half a second, almost all of it
reading and validating tokens nobody changed. A loaded config keeps a
:class:`Reread`: its file's text, its settings without their tokens, and
where each item of every ``tokens:`` list starts. The next load of the file
compares the texts; when everything that changed lies within the items of
one such list, only those items are read and validated again, and every other
token is the previous config's very object.

Everything else is done again as a full load would: secrets are read again,
the environment looked at, owners and groups looked up. Whenever the result
could differ from a full load's (an edit elsewhere, an anchor or alias near
the edit, any error, a duplicate name or output path, an owner that now
resolves differently, a ``template_file`` whose text changed), :func:`reread`
answers ``None`` and the caller loads the whole file, so errors read exactly as
they always do.

An edited item is read on its own. That reads it as it reads in place
because every line of it is blank, a comment, or indented deeper than the
``-`` of its list, except the ``-`` lines that start items: nothing in it can
close, open or continue anything outside it.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import ValidationError

from tokend.config.build import Builder, Inherited, environment_overrides, lookup_id
from tokend.config.document import Document
from tokend.config.edits import Stale, changed_lines, item_starts, read_items, shifted
from tokend.config.reader import MAX_ALIASED, KeyPath, Mark, Span
from tokend.config.schema import Settings, Token
from tokend.errors import ConfigError
from tokend.model import ApplicationSpec, Config, TokenSpec


@dataclass(frozen=True)
class Reread:
    """What a loaded config keeps so that the next load of its file can skip what is unchanged."""

    packed: bytes
    """The file's text, compressed: about a twentieth of it, kept by every loaded config."""
    settings: Settings
    """As validated, every application's tokens left out."""
    overrides: Mapping[str, str]
    lists: Mapping[str, Span]
    """By application: where the items of its ``tokens:`` list start."""
    offsets: Mapping[str, int]
    """By application: the index of its first token in ``Config.tokens``."""
    ids: Mapping[tuple[str, str], int | None]
    """The uid or gid each owner and group name resolved to."""
    aliased: int
    anchors: list[int]
    """Where anchors are defined: an edit there may change what aliases elsewhere repeat."""
    tokens: tuple[TokenSpec, ...]
    """The config's tokens: a config that does not hold this very tuple is another config."""
    templates: Mapping[Path, str | None] = field(default_factory=dict)
    """The text each ``template_file`` held when read (``None``: unreadable)."""

    @classmethod
    def of(cls, config: Config, document: Document, settings: Settings, *,
           overrides: Mapping[str, str], offsets: Mapping[str, int], builder: Builder) -> Reread:
        """``settings`` as the loader validated them: without their tokens."""
        lists = {key[0]: span for key, span in document.read.spans.items() if key[0] in offsets}
        return cls(_pack(document.text), settings, dict(overrides), lists, dict(offsets),
                   dict(builder.ids), document.read.aliased, document.read.anchors, config.tokens,
                   dict(builder.templates))


class _Strict:
    """A reporter for a load that must find no problem: the first one sends it to a full load."""

    def __init__(self, source: str, mode: int, plain: Mapping[KeyPath, str]) -> None:
        self.source = source
        self.mode = mode
        self.plain = plain

    def add(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        raise Stale

    def location(self, path: KeyPath) -> str:
        raise Stale

    def mark(self, path: KeyPath, *, key: bool = False) -> Mark | None:
        raise Stale


def reread(path: Path, text: str, mode: int, env: Mapping[str, str],
           previous: Config) -> Config | None:
    """``previous`` brought up to ``text``, or ``None`` when only a full load can say."""
    memo = previous.reread
    if not isinstance(memo, Reread) or memo.tokens is not previous.tokens or (
            previous.source != path or environment_overrides(env) != memo.overrides
            or memo.aliased > MAX_ALIASED + len(text)
            or any(lookup_id(*name) != found for name, found in memo.ids.items())
            or any(_text_of(file) != text for file, text in memo.templates.items())):
        return None
    try:
        return _Reload(memo, previous, path=path, text=text, mode=mode, env=env).config()
    except (Stale, ConfigError, ValidationError):
        return None


@dataclass
class _Items:
    """The items of one ``tokens:`` list after an edit, and what the next reload needs."""

    tokens: tuple[TokenSpec, ...]
    lists: dict[str, Span]
    offsets: dict[str, int]
    anchors: list[int]


class _Reload:
    def __init__(self, memo: Reread, previous: Config, *, path: Path, text: str, mode: int,
                 env: Mapping[str, str]) -> None:
        self._memo = memo
        self._previous = previous
        self._path = path
        self._text = text
        self._mode = mode
        self._env = env
        self._ids = dict(memo.ids)
        self._templates = dict(memo.templates)
        self._old = zlib.decompress(memo.packed).decode()

    def _builder(self, plain: Mapping[KeyPath, str]) -> Builder:
        return Builder(self._path, _Strict(str(self._path), self._mode, plain), self._env)

    def config(self) -> Config:
        memo, previous = self._memo, self._previous
        settings = memo.settings
        builder = self._builder({})
        builder.retry(("defaults",), settings.defaults)
        applications: dict[str, ApplicationSpec] = {}
        inherited: dict[str, Inherited] = {}
        for name, app in settings.applications.items():
            spec, inherited[name] = builder.application(name, app, settings.defaults)
            old = previous.applications.get(name)
            applications[name] = old if old == spec else spec
        edit = changed_lines(self._old, self._text)
        items = _Items(previous.tokens, dict(memo.lists), dict(memo.offsets),
                       memo.anchors) if edit is None else self._items(edit, inherited)
        concurrency = settings.defaults.concurrency
        metrics = builder.metrics(settings)
        config = Config(source=self._path, state_dir=builder.state_dir(settings, memo.overrides),
                        applications=applications, tokens=items.tokens,
                        warnings=tuple(builder.warnings),
                        metrics=previous.metrics if previous.metrics == metrics else metrics,
                        store=builder.store(settings),
                        **({} if concurrency is None else {"concurrency": concurrency}))
        return replace(config, reread=Reread(
            _pack(self._text), settings, memo.overrides, items.lists, items.offsets, self._ids,
            memo.aliased, items.anchors, items.tokens, self._templates))

    def _items(self, edit: tuple[int, int, int], inherited: Mapping[str, Inherited]) -> _Items:
        """Read and validate the items the edit changed; keep every other token as it was."""
        start, old_end, new_end = edit
        memo, previous = self._memo, self._previous
        app, span = next(((app, span) for app, span in memo.lists.items()
                          if span.starts[0] <= start and old_end <= span.end), (None, None))
        if app is None or span is None:
            raise Stale  # not confined to the items of one list
        bounds = [*span.starts, span.end]
        first = bisect.bisect_right(span.starts, start) - 1
        if start == span.starts[first] and first > 0:
            first -= 1  # the edit may end the item before as well as start this one
        # Text inserted where an item starts is part of that item.
        last = min(bisect.bisect_right(bounds, old_end), len(span.starts))
        delta = new_end - old_end
        if bisect.bisect_left(memo.anchors, bounds[first]) != bisect.bisect_left(
                memo.anchors, bounds[last]):
            raise Stale  # an anchor there may be what values elsewhere repeat
        offset = memo.offsets[app]
        replaced = previous.tokens[offset + first:offset + last]
        segment = self._text[bounds[first]:bounds[last] + delta]
        chunks = item_starts(segment, span.column)
        fresh, added = self._read(
            app, segment, chunks, inherited[app], first=first, replaced={
                self._old[bounds[index]:bounds[index + 1]]: spec
                for index, spec in enumerate(replaced, first)})
        tokens = (*previous.tokens[:offset + first], *fresh, *previous.tokens[offset + last:])
        if added and _repeats(tokens):
            raise Stale  # a name or path written twice: a full load words it
        shift = len(fresh) - len(replaced)
        lists = {name: other if other.end <= start else shifted(other, delta)
                 for name, other in memo.lists.items()}
        lists[app] = Span(span.column, [*span.starts[:first],
                                        *(bounds[first] + at for at in chunks),
                                        *(at + delta for at in span.starts[last:])],
                          span.end + delta)
        if not lists[app].starts:
            raise Stale  # no item is left: ``tokens:`` is now empty
        return _Items(
            tokens, lists,
            {name: at + shift if at > offset else at for name, at in memo.offsets.items()},
            [at if at < start else at + delta for at in memo.anchors])

    def _read(self, app: str, segment: str, chunks: list[int], inherited: Inherited, *,
              first: int, replaced: Mapping[str, TokenSpec]) -> tuple[
            list[TokenSpec], list[TokenSpec]]:
        """The specs of the items in ``segment``, and the ones it added: an item whose text is
        one of the ``replaced`` items' keeps that spec, the others are read and validated, a
        run of changed items at a time (the previous spec still, when one comes out equal)."""
        bounds = [*chunks, len(segment)]
        found = [replaced.get(segment[at:bounds[index + 1]]) for index, at in enumerate(chunks)]
        kept = {id(spec) for spec in found if spec is not None}
        if len(kept) != len(found) - found.count(None):
            raise Stale  # one item written twice
        unmatched = {spec.name: spec for spec in replaced.values() if id(spec) not in kept}
        added: list[TokenSpec] = []
        index = 0
        while index < len(found):
            if found[index] is not None:
                index += 1
                continue
            end = next((at for at in range(index, len(found)) if found[at] is not None),
                       len(found))
            run = self._run(app, segment[bounds[index]:bounds[end]],
                            [at - bounds[index] for at in chunks[index:end]], inherited,
                            first=first + index)
            for at, spec in enumerate(run, index):
                same = unmatched.get(spec.name)
                if same == spec:
                    found[at] = unmatched.pop(spec.name)
                else:
                    found[at] = spec
                    added.append(spec)
            index = end
        return [spec for spec in found if spec is not None], added

    def _run(self, app: str, run: str, starts: list[int], inherited: Inherited, *,
             first: int) -> list[TokenSpec]:
        """The specs of the consecutive changed items in ``run``, the first at index ``first``."""
        settings = self._memo.settings
        where: KeyPath = ("applications", app, "tokens")
        items, plain = read_items(run, starts, str(self._path))
        builder = self._builder({(*where, first + int(path[0]), *path[1:]): raw
                                 for path, raw in plain.items()})
        specs = [builder.token(app, Token.model_validate(item), (*where, first + at), inherited,
                               settings.applications[app], settings.defaults)
                 for at, item in enumerate(items)]
        self._ids.update(builder.ids)
        self._templates.update(builder.templates)
        return specs


def _text_of(file: Path) -> str | None:
    """A template file's text now; ``None`` when it cannot be read (as :class:`Builder`)."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    return text if text.strip() else None


def _pack(text: str) -> bytes:
    """``text`` as :attr:`Reread.packed` keeps it (the fastest level: a load pays 2 ms for
    10,000 tokens, a reload 3)."""
    return zlib.compress(text.encode(), 1)


def _repeats(tokens: tuple[TokenSpec, ...]) -> bool:
    """Whether two of ``tokens`` share a name or an output path. Checked over all of them
    when an edit adds one, rather than kept as sets of both by every loaded config."""
    paths = [output.path for spec in tokens for output in spec.outputs]
    return len({spec.name for spec in tokens}) != len(tokens) or len(set(paths)) != len(paths)


def reuse(config: Config, previous: Config) -> Config:
    """``config`` holding ``previous``'s very objects wherever they are equal."""
    before = {spec.name: spec for spec in previous.tokens}
    tokens = tuple(old if (old := before.get(spec.name)) == spec else spec
                   for spec in config.tokens)
    applications = {name: same if (same := previous.applications.get(name)) == app else app
                    for name, app in config.applications.items()}
    memo = config.reread
    return replace(config, tokens=tokens, applications=applications,
                   reread=replace(memo, tokens=tokens) if isinstance(memo, Reread) else memo)
