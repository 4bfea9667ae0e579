"""API keys from the settings or from a file that is read again before each poll."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pydantic
import pytest
from conftest import SECRET_KEY, make_settings

from magnet_exporter.keys import KeyFile, StaticKey, read_key_file
from magnet_exporter.settings import describe_errors


def test_static_key() -> None:
    settings = make_settings(api_key=SECRET_KEY)
    (target,) = settings.targets()
    assert isinstance(target.key, StaticKey)
    assert target.key().get_secret_value() == SECRET_KEY


def test_key_file_is_read_again_before_each_poll(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(SECRET_KEY + "\n")
    (target,) = make_settings(api_key_file=path).targets()
    assert target.key().get_secret_value() == SECRET_KEY
    path.write_text("rotated-key\n")
    assert target.key().get_secret_value() == "rotated-key"


def test_an_unreadable_key_file_keeps_the_last_key_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "key"
    path.write_text(SECRET_KEY)
    key = KeyFile(path)
    path.unlink()
    with caplog.at_level(logging.WARNING):
        assert key().get_secret_value() == SECRET_KEY
        assert key().get_secret_value() == SECRET_KEY
    assert [r.getMessage() for r in caplog.records] == [
        "key file unreadable; using the last key read"
    ]
    path.write_text("back-again")
    assert key().get_secret_value() == "back-again"
    assert SECRET_KEY not in caplog.text


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "is empty"),
        ("  \n", "is empty"),
        (SECRET_KEY + " extra", "contains spaces, control or non-ASCII characters"),
        ("clé", "contains spaces, control or non-ASCII characters"),
    ],
)
def test_bad_key_files_are_named_never_quoted(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"{path} {reason}")):
        read_key_file(path)


def test_key_and_key_file_together_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(SECRET_KEY)
    with pytest.raises(pydantic.ValidationError) as caught:
        make_settings(api_key=SECRET_KEY, api_key_file=path)
    assert describe_errors(caught.value) == ["set MAGNET_API_KEY or MAGNET_API_KEY_FILE, not both"]
