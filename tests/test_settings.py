"""Settings: defaults, environment and .env, flags over environment, and each bad setting."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
from conftest import SECRET_KEY, make_settings

from magnet_exporter.model import IdleListing
from magnet_exporter.settings import Settings, describe_errors


def problems(**values: object) -> list[str]:
    with pytest.raises(pydantic.ValidationError) as caught:
        make_settings(**values)
    return describe_errors(caught.value)


def test_defaults() -> None:
    settings = make_settings(api_key=SECRET_KEY)
    assert settings.api_url == "https://magnet.run"
    assert settings.organization_id is None
    assert settings.organization == "default"
    assert settings.poll_interval_seconds == 60
    assert settings.request_timeout_seconds == 10
    assert settings.stale_after == 180
    assert settings.listen_host_port == ("0.0.0.0", 9877)
    assert settings.session_labels == ("status", "pr_status", "model")
    assert settings.max_label_values == 100
    assert settings.idle_listing == IdleListing(after_seconds=900, limit=10)
    assert (settings.log_level, settings.log_format) == ("info", "logfmt")


def test_organization_label_defaults_to_the_organization_id() -> None:
    assert make_settings(api_key="k", organization_id="org_9").organization == "org_9"
    named = make_settings(api_key="k", organization_id="org_9", organization="acme")
    assert named.organization == "acme"


def test_stale_after_follows_the_poll_interval() -> None:
    assert make_settings(api_key="k", poll_interval_seconds=30).stale_after == 90
    assert make_settings(api_key="k", stale_after_seconds=600).stale_after == 600


def test_demo_needs_no_key_and_polls_every_five_seconds() -> None:
    settings = make_settings(demo=True)
    assert settings.api_key is None
    assert settings.poll_interval_seconds == 5
    assert make_settings(demo=True, poll_interval_seconds=20).poll_interval_seconds == 20


def test_environment_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        f"MAGNET_API_KEY={SECRET_KEY}\nMAGNET_POLL_INTERVAL_SECONDS=30\nOTHER_TOOL_SETTING=x\n"
    )
    monkeypatch.setenv("MAGNET_POLL_INTERVAL_SECONDS", "45")
    monkeypatch.setenv("MAGNET_SESSION_LABELS", "status, repository,author")
    settings = Settings(_env_file=dotenv)  # type: ignore[call-arg]
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == SECRET_KEY
    assert settings.poll_interval_seconds == 45  # the environment wins over .env
    assert settings.session_labels == ("status", "repository", "author")
    # Keyword arguments (what the command line passes) win over both.
    overridden = Settings(_env_file=dotenv, poll_interval_seconds=90)  # type: ignore[call-arg]
    assert overridden.poll_interval_seconds == 90


def test_key_is_stripped_and_hidden() -> None:
    settings = make_settings(api_key=f"  {SECRET_KEY}\n")
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == SECRET_KEY
    assert SECRET_KEY not in repr(settings)
    assert SECRET_KEY not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "MAGNET_API_KEY is required (or MAGNET_API_KEY_FILE, or --demo)"),
        ({"api_key": "  "}, "MAGNET_API_KEY: is empty"),
        ({"api_key": "ab\x00cd"}, "MAGNET_API_KEY: contains spaces, control or non-ASCII"),
        ({"poll_interval_seconds": 4}, "MAGNET_POLL_INTERVAL_SECONDS (--poll-interval): "),
        ({"request_timeout_seconds": 0}, "MAGNET_REQUEST_TIMEOUT_SECONDS (--request-timeout): "),
        ({"stale_after_seconds": 30}, "MAGNET_STALE_AFTER_SECONDS (--stale-after) must be at"),
        ({"session_labels": "status,title"}, "MAGNET_SESSION_LABELS (--session-labels): unknown"),
        ({"session_labels": "status,status"}, "MAGNET_SESSION_LABELS (--session-labels): names"),
        ({"session_labels": ""}, "MAGNET_SESSION_LABELS (--session-labels): needs at least"),
        ({"listen_address": "localhost"}, "MAGNET_LISTEN_ADDRESS (--listen-address): must be"),
        ({"listen_address": "0.0.0.0:99999"}, "MAGNET_LISTEN_ADDRESS (--listen-address): must"),
        ({"max_label_values": 0}, "MAGNET_MAX_LABEL_VALUES (--max-label-values): "),
        ({"idle_session_seconds": -1}, "MAGNET_IDLE_SESSION_SECONDS (--idle-session-seconds): "),
        ({"idle_session_seconds": "soon"}, "MAGNET_IDLE_SESSION_SECONDS (--idle-session-"),
        ({"idle_sessions_max": -1}, "MAGNET_IDLE_SESSIONS_MAX (--idle-sessions-max): "),
        ({"idle_sessions_max": 1001}, "MAGNET_IDLE_SESSIONS_MAX (--idle-sessions-max): "),
        ({"idle_session_seconds": 2_592_001}, "MAGNET_IDLE_SESSION_SECONDS (--idle-session-"),
        ({"api_url": "magnet.run"}, "MAGNET_API_URL (--api-url): must be an http"),
        ({"log_level": "loud"}, "MAGNET_LOG_LEVEL (--log-level): "),
        ({"log_format": "xml"}, "MAGNET_LOG_FORMAT (--log-format): "),
    ],
)
def test_each_bad_setting_is_named(values: dict[str, object], expected: str) -> None:
    if values:  # every case but the first is about another setting than a missing key
        values = {"api_key": SECRET_KEY, **values}
    lines = problems(**values)
    assert len(lines) == 1
    assert lines[0].startswith(expected)


def test_every_problem_gets_its_own_line() -> None:
    lines = problems(api_key="k", poll_interval_seconds=1, log_format="xml", listen_address="x")
    assert [line.split(" ")[0] for line in lines] == [
        "MAGNET_POLL_INTERVAL_SECONDS",
        "MAGNET_LISTEN_ADDRESS",
        "MAGNET_LOG_FORMAT",
    ]


def test_the_idle_listing_takes_both_settings_and_zero_lists_none() -> None:
    settings = make_settings(api_key="k", idle_session_seconds=3600, idle_sessions_max=0)
    assert settings.idle_listing == IdleListing(after_seconds=3600, limit=0)


def test_listen_address_forms() -> None:
    assert make_settings(api_key="k", listen_address="[::1]:9000").listen_host_port == ("::1", 9000)
    assert make_settings(api_key="k", listen_address=":9000").listen_host_port == ("0.0.0.0", 9000)


def test_error_messages_never_quote_the_key() -> None:
    lines = problems(api_key=SECRET_KEY + "\x01", poll_interval_seconds=1)
    assert lines
    assert not any(SECRET_KEY in line for line in lines)
