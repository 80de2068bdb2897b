"""The action key-ring flags, included in the settings of every service that reads or
writes the actions topic (a mixin of its `ServiceSettings` subclass)."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from services.actions.records import KeyRing
from services.common.errors import ConfigError

log = logging.getLogger("safeguards.actions")


class ActionKeySettings(BaseModel):
    action_keys: str = Field(
        "",
        description="the region's action signing keys, KEY_ID:BASE64[,KEY_ID:BASE64...] (each >= 32 bytes): the "
        "first signs, every one verifies (rotation: README 'Action signing keys'); prefer --action-keys-file",
    )
    action_keys_file: str = Field("", description="file holding the action signing keys, in --action-keys' format")
    insecure_dev_action_key: bool = Field(
        False,
        description="when no keys are given, sign and verify actions with the built-in DEVELOPMENT key, which is "
        "public: anyone who reaches Kafka can forge actions (make run and tests only; given keys win)",
    )

    @model_validator(mode="after")
    def _check_action_keys(self) -> ActionKeySettings:
        if self.action_keys and self.action_keys_file:
            raise ValueError("give --action-keys or --action-keys-file, not both")
        if self.action_keys:
            try:
                KeyRing.parse(self.action_keys)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    def action_key_ring(self) -> KeyRing:
        """The key ring; ConfigError when none was given and the insecure development
        key was not chosen explicitly."""
        if self.action_keys:
            return KeyRing.parse(self.action_keys)
        if self.action_keys_file:
            try:
                text = Path(self.action_keys_file).read_text()
            except OSError as exc:
                raise ConfigError(f"--action-keys-file: cannot read {self.action_keys_file}: {exc.strerror}") from None
            return KeyRing.parse(text, where=self.action_keys_file)
        if self.insecure_dev_action_key:
            log.warning(
                "INSECURE: enforcement actions are signed with the public development key; anyone who reaches "
                "Kafka can forge them. Give --action-keys-file outside local runs."
            )
            return KeyRing.insecure_dev()
        raise ConfigError(
            "no action signing key: give --action-keys-file (or --action-keys), the region's key ring that signs "
            "and verifies enforcement actions (README 'Action signing keys'), or --insecure-dev-action-key for a "
            "local run"
        )
