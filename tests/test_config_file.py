"""The YAML configuration file: settings, organizations, precedence and every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
from conftest import SECRET_KEY, make_settings

from magnet_exporter.settings import Settings, describe_errors


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write(tmp_path / "acme.key", SECRET_KEY + "\n")


def problems(**values: object) -> list[str]:
    with pytest.raises(pydantic.ValidationError) as caught:
        make_settings(**values)
    return describe_errors(caught.value)


def test_organizations_from_the_file(tmp_path: Path, key_file: Path) -> None:
    config = write(
        tmp_path / "magnet.yml",
        f"""
poll_interval_seconds: 30
session_labels: status,repository
organizations:
  - name: acme
    api_key_file: {key_file}
  - name: globex
    api_key: other-key
    organization_id: org_globex
""",
    )
    settings = make_settings(config_file=config)
    assert settings.poll_interval_seconds == 30
    assert settings.session_labels == ("status", "repository")
    targets = settings.targets()
    assert [(t.name, t.organization_id) for t in targets] == [
        ("acme", None),
        ("globex", "org_globex"),
    ]
    assert [t.key().get_secret_value() for t in targets] == [SECRET_KEY, "other-key"]


def test_environment_and_flags_win_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(
        tmp_path / "magnet.yml",
        f"api_key: {SECRET_KEY}\npoll_interval_seconds: 30\nrequest_timeout_seconds: 3\n",
    )
    monkeypatch.setenv("MAGNET_CONFIG_FILE", str(config))
    monkeypatch.setenv("MAGNET_POLL_INTERVAL_SECONDS", "45")
    settings = Settings(_env_file=None, request_timeout_seconds=4)  # type: ignore[call-arg]
    assert settings.poll_interval_seconds == 45
    assert settings.request_timeout_seconds == 4
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == SECRET_KEY


def test_empty_file_is_no_settings(tmp_path: Path) -> None:
    config = write(tmp_path / "magnet.yml", "# nothing yet\n")
    assert make_settings(config_file=config, api_key="k").organizations == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "poll_interval_secnds: 30\n",
            "MAGNET_CONFIG_FILE (--config): {path}: unknown setting poll_interval_secnds",
        ),
        ("organizations: [\n", "MAGNET_CONFIG_FILE (--config): {path} is not valid YAML at line 2"),
        ("- a\n- b\n", "MAGNET_CONFIG_FILE (--config): {path} must hold a mapping of settings"),
        (
            "organizations:\n  - name: acme\n",
            "organizations[0] in the configuration file: organization 'acme' needs api_key or "
            "api_key_file (one)",
        ),
        (
            "organizations:\n  - name: acme\n    api_key: a\n    api_key_file: /etc/hostname\n",
            "organizations[0] in the configuration file: organization 'acme' needs api_key or "
            "api_key_file (one)",
        ),
        (
            "organizations:\n  - name: acme\n    api_key_file: /nonexistent/key\n",
            "organizations[0].api_key_file in the configuration file: cannot read "
            "/nonexistent/key: No such file or directory",
        ),
        (
            "organizations:\n  - name: a\n    api_key: k\n  - name: a\n    api_key: j\n",
            "organizations in the configuration file: name a is used more than once",
        ),
        (
            "organizations:\n  - name: a\n    api_key: k\n    colour: red\n",
            "organizations[0].colour in the configuration file: Extra inputs are not permitted",
        ),
        (
            "organizations:\n  - name: ''\n    api_key: k\n",
            "organizations[0].name in the configuration file: String should have at least 1",
        ),
    ],
)
def test_each_mistake_is_named(tmp_path: Path, text: str, expected: str) -> None:
    config = write(tmp_path / "magnet.yml", text)
    lines = problems(config_file=config)
    assert len(lines) == 1
    assert lines[0].startswith(expected.format(path=config))


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yml"
    assert problems(config_file=missing) == [
        f"MAGNET_CONFIG_FILE (--config): cannot read {missing}: No such file or directory"
    ]


def test_keys_in_the_file_are_never_quoted(tmp_path: Path) -> None:
    config = write(
        tmp_path / "magnet.yml",
        f'organizations:\n  - name: a\n    api_key: "{SECRET_KEY} x"\n    bogus: 1\n',
    )
    lines = problems(config_file=config)
    assert len(lines) == 2
    assert not [line for line in lines if SECRET_KEY in line]


def test_relative_key_files_are_relative_to_the_configuration_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc" / "secrets").mkdir(parents=True)
    write(tmp_path / "etc" / "secrets" / "acme.key", SECRET_KEY + "\n")
    write(tmp_path / "etc" / "globex.key", "globex-key\n")
    config = write(
        tmp_path / "etc" / "magnet.yml",
        "api_key_file: globex.key\n"
        "organizations:\n  - name: acme\n    api_key_file: secrets/acme.key\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory plays no part
    settings = make_settings(config_file=Path("..") / "etc" / "magnet.yml")
    (acme,) = settings.targets()
    assert acme.key().get_secret_value() == SECRET_KEY
    assert settings.api_key_file is not None
    assert settings.api_key_file.resolve() == config.parent / "globex.key"
    assert settings.api_key_file.is_absolute()
    # From a flag or the environment a path is the working directory's, as for any command.
    write(elsewhere / "globex.key", "from-the-working-directory\n")
    flag = make_settings(config_file=config, api_key_file="globex.key")
    assert flag.api_key_file == Path("globex.key")
