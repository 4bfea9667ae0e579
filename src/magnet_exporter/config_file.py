"""The YAML configuration file: the same settings as the environment, plus organizations."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from magnet_exporter.keys import ApiKey, ApiKeyFile


class Organization(BaseModel):
    """One entry of `organizations:` in the configuration file."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(min_length=1, max_length=128)
    """The value of the `organization` label."""
    api_key: ApiKey | None = None
    api_key_file: ApiKeyFile | None = None
    organization_id: str | None = None

    @model_validator(mode="after")
    def _one_key(self) -> Organization:
        if (self.api_key is None) == (self.api_key_file is None):
            raise ValueError(f"organization {self.name!r} needs api_key or api_key_file (one)")
        return self


def read_config_file(path: Path, known_keys: Collection[str]) -> dict[str, Any]:
    """Read the file's mapping of settings; raise ValueError saying what is wrong with it."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"{path} is not valid YAML{line}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ValueError(f"{path} must hold a mapping of settings")
    unknown = sorted(str(key) for key in document if key not in known_keys)
    if unknown:
        raise ValueError(f"{path}: unknown setting {', '.join(unknown)}")
    return _paths_from(path.absolute().parent, document)


PATH_SETTINGS = ("api_key_file", "web_config_file")
"""Settings of the file that name files: relative ones are relative to the file itself."""


def _paths_from(directory: Path, document: dict[str, Any]) -> dict[str, Any]:
    """Resolve relative file names against `directory`, as Prometheus does with its own files.

    The file then means the same whatever the working directory of the exporter; paths from
    flags and the environment stay relative to the working directory, as any command's.
    """

    def resolved(settings: dict[Any, Any]) -> dict[Any, Any]:
        return {
            key: str(directory / value)
            if key in PATH_SETTINGS and isinstance(value, str) and value
            else value
            for key, value in settings.items()
        }

    document = resolved(document)
    organizations = document.get("organizations")
    if isinstance(organizations, list):
        document["organizations"] = [
            resolved(entry) if isinstance(entry, dict) else entry for entry in organizations
        ]
    return document


class ConfigFileSource(PydanticBaseSettingsSource):
    """The lowest-priority source: the file that a higher source (flag, env, .env) names."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: `__call__` reads the whole file at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """Return the file's settings, or nothing if no file is named."""
        path = self.current_state.get("config_file")
        if not path:
            return {}
        try:
            return read_config_file(Path(path), self.settings_cls.model_fields)
        except ValueError:
            return {}  # the `config_file` setting's own validation reports the problem
