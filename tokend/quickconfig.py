"""Find the state directory without loading the whole configuration.

``tokend token`` runs inside other programs' ``$(…)``, often many times a
minute, so it must start fast: no pydantic, no httpx, no structlog. It needs
exactly one thing from the config file, ``state_dir``, and this module finds
it with the same rules as :func:`tokend.config.load_config` (a test keeps the
two in agreement). Anything unexpected is a :class:`ConfigError` that points
at ``tokend check``, which validates the whole file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from tokend.errors import ConfigError

# Mirror tokend.config's constants; importing that module would import pydantic.
DEFAULT_CONFIG_PATH = Path("/etc/tokend/config.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/tokend")


def quick_state_dir(path: Path, *, environ: Mapping[str, str] | None = None) -> Path:
    """``state_dir`` as ``load_config`` resolves it.

    Order: ``$TOKEND_STATE_DIR``; the file's ``state_dir`` (relative to the
    file's folder); the first entry of systemd's ``$STATE_DIRECTORY``;
    ``/var/lib/tokend``.
    """
    env = os.environ if environ is None else environ
    override = env.get("TOKEND_STATE_DIR")
    if override:
        return Path(override).absolute()
    try:
        with path.open("rb") as file:
            data = yaml.safe_load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: is not valid YAML; run `tokend check`") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must be a mapping; run `tokend check`")
    value = data.get("state_dir")
    if value is not None:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise ConfigError(f"{path}: state_dir must be a non-empty string; run `tokend check`")
        return path.absolute().parent / value
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(systemd).absolute() if systemd else DEFAULT_STATE_DIR


def quick_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$TOKEND_CONFIG``, else ``/etc/tokend/config.yaml`` (as ``default_config_path``)."""
    env = os.environ if environ is None else environ
    return Path(env["TOKEND_CONFIG"]) if env.get("TOKEND_CONFIG") else DEFAULT_CONFIG_PATH
