"""The models file as the command line reads it: its structure (:mod:`llmspool.shared.config`)
and each model's backend options, checked by the backend's own options model."""

from __future__ import annotations

from pathlib import Path

from llmspool.consumers.backends import check_options
from llmspool.shared.config import DEFAULT_CONFIG_FILE, Config, load_config


def load_models(path: Path | None = None) -> Config:
    """The models file at ``path`` (or ./llmspool.toml, or the default), fully checked; a bad
    key raises :class:`~llmspool.shared.errors.ConfigError` naming it."""
    return check_options(load_config(path), source=str(path or DEFAULT_CONFIG_FILE))
