"""Where an API key comes from: the settings, or a file that is read again before each poll."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, SecretStr

log = logging.getLogger("magnet_exporter.keys")


def check_key(key: str) -> str:
    """Return the key without surrounding white space; raise ValueError, never quoting it."""
    key = key.strip()  # a key file or a copy-paste brings a newline
    if not key:
        raise ValueError("is empty")
    if not all(" " < char < "\x7f" for char in key):
        raise ValueError("contains spaces, control or non-ASCII characters")
    return key


def read_key_file(path: Path) -> SecretStr:
    """Read and check a key file; raise ValueError with a reason that names the file only."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read {path}: {reason}") from None
    try:
        return SecretStr(check_key(text))
    except ValueError as error:
        raise ValueError(f"{path} {error}") from None


def _checked_key(value: SecretStr) -> SecretStr:
    return SecretStr(check_key(value.get_secret_value()))


def _readable_key_file(path: Path) -> Path:
    read_key_file(path)
    return path


ApiKey = Annotated[SecretStr, AfterValidator(_checked_key)]
"""A key setting: stripped, refused (without being quoted) when empty or not sendable."""
ApiKeyFile = Annotated[Path, AfterValidator(_readable_key_file)]
"""A key file setting: refused unless it holds a usable key right now."""


class StaticKey:
    """A key given in the settings."""

    def __init__(self, key: SecretStr) -> None:
        self._key = key

    def __call__(self) -> SecretStr:
        """Return the key."""
        return self._key


class KeyFile:
    """A key read from a file before each poll, so that a rotated secret needs no restart.

    When the file cannot be read (for example while it is being replaced), the last key read
    is used and the problem is logged once, until the file can be read again.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._key = read_key_file(path)  # at start an unreadable file is a configuration error
        self._failing = False

    def __call__(self) -> SecretStr:
        """Return the key in the file now, or the last one read."""
        try:
            self._key = read_key_file(self._path)
        except ValueError as error:
            if not self._failing:
                log.warning(
                    "key file unreadable; using the last key read", extra={"reason": str(error)}
                )
            self._failing = True
        else:
            self._failing = False
        return self._key
