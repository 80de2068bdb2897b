"""Small YAML configuration files (admin tokens, console users) read into a pydantic
model, every problem a `ConfigError` naming the file, the field and what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from services.common.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def load_model(path: Path, model: type[M], top_key: str) -> M:
    """Parse `path` as YAML into `model` (an empty file is an empty mapping)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping with a {top_key!r} key")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {where}: {err['msg'].removeprefix('Value error, ')}") from None
