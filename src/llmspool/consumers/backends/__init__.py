"""Backends: one module per engine behind :class:`~llmspool.consumers.backends.base.Backend`.

A new engine is one module here and one line in :data:`BACKENDS`. Modules import their engine
lazily (in ``start``), so reading a backend's options never needs the engine installed.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from llmspool.shared.config import Config, ModelConfig, options_error
from llmspool.shared.errors import ConfigError

if TYPE_CHECKING:
    from llmspool.consumers.backends.base import Backend

#: backend name -> module under llmspool.consumers.backends
BACKENDS: dict[str, str] = {
    "fake": "fake",
    "llama_cpp": "llama_cpp",
    "openai": "openai",
    "transformers": "transformers",
    "vllm": "vllm",
}


def _module(name: str) -> ModuleType:
    if name not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown backend '{name}'; known backends: {known}")
    return import_module(f"{__name__}.{BACKENDS[name]}")


def options_class(name: str) -> type[BaseModel]:
    """The options model that validates a model's ``[models.options]`` for backend ``name``."""
    options: type[BaseModel] = _module(name).Options
    return options


def check_options(config: Config, source: str = "config") -> Config:
    """``config`` once each model's backend exists and accepts its ``[models.options]``; else
    a :class:`~llmspool.shared.errors.ConfigError` naming the model and the key."""
    for model in config.models:
        try:
            options = options_class(model.backend)
        except ValueError as exc:
            raise ConfigError(f"{source}: models[{model.name}]: {exc}") from None
        try:
            options.model_validate(model.options)
        except ValidationError as exc:
            raise options_error(source, model.name, exc) from None
    return config


def create_backend(model: ModelConfig) -> Backend:
    """Build (not start) the backend that serves ``model``."""
    factory = _module(model.backend).create
    backend: Backend = factory(model)
    return backend
