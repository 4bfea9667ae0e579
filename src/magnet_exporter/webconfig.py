"""The web configuration file of Prometheus' exporter-toolkit: TLS, basic auth, extra headers.

The format is the one of `--web.config.file` in the official exporters
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md),
restricted to what Python's `ssl` module can do. Everything is checked, and the certificate
and key are loaded, when the file is read: a bad file fails the start, not the first scrape.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import ssl
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import bcrypt
import yaml

TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = MappingProxyType(
    {
        "TLS10": ssl.TLSVersion.TLSv1,
        "TLS11": ssl.TLSVersion.TLSv1_1,
        "TLS12": ssl.TLSVersion.TLSv1_2,
        "TLS13": ssl.TLSVersion.TLSv1_3,
    }
)
"""The values of `min_version` and `max_version`."""

CLIENT_AUTH_TYPES: Mapping[str, ssl.VerifyMode] = MappingProxyType(
    {
        "NoClientCert": ssl.CERT_NONE,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }
)
"""The supported values of `client_auth_type`, and what they ask of the client."""

# Go can ask for a client certificate without verifying it; Python's ssl module cannot.
_UNSUPPORTED_CLIENT_AUTH_TYPES = frozenset({"RequestClientCert", "RequireAnyClientCert"})

HEADERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Content-Security-Policy": (),
        "Strict-Transport-Security": (),
        "X-Content-Type-Options": ("nosniff",),
        "X-Frame-Options": ("deny", "sameorigin"),
        "X-XSS-Protection": (),
    }
)
"""The headers `http_server_config.headers` may set, with their allowed values (any if empty).

As in exporter-toolkit, which keeps the list closed for consistency across exporters.
"""

_FIELDS = {
    "": ("tls_server_config", "http_server_config", "basic_auth_users"),
    "tls_server_config": (
        "cert_file",
        "key_file",
        "client_ca_file",
        "client_auth_type",
        "min_version",
        "max_version",
    ),
    "http_server_config": ("headers", "http2"),
}

# Fields of exporter-toolkit that this exporter does not implement: named as such, not "unknown".
_UNSUPPORTED_FIELDS = {
    "": ("rate_limit",),
    "tls_server_config": (
        "cert",
        "key",
        "client_ca",
        "client_allowed_sans",
        "cipher_suites",
        "curve_preferences",
        "prefer_server_cipher_suites",
    ),
    "http_server_config": (),
}

_BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_BCRYPT_MAX_PASSWORD_BYTES = 72  # bcrypt ignores the rest; the bcrypt package refuses it
_HTPASSWD_HINT = "make one with: htpasswd -nBC 10 '' | tr -d ':\\n'"


class WebConfigError(Exception):
    """The web configuration file cannot be used; `problems` says why, one line each."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"invalid web configuration file {path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


@dataclass(frozen=True)
class TlsConfig:
    """The `tls_server_config` section, with the server's SSL context built from it."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    client_auth_type: str
    min_version: ssl.TLSVersion
    max_version: ssl.TLSVersion
    context: ssl.SSLContext = field(repr=False, compare=False)


@dataclass(frozen=True)
class WebConfig:
    """A checked web configuration; the default is plain HTTP, no auth, no extra headers."""

    tls: TlsConfig | None = None
    basic_auth_users: Mapping[str, bytes] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def load_web_config(path: Path) -> WebConfig:
    """Read and check the file, and load its certificates; raise WebConfigError if unusable."""
    problems: list[str] = []
    document = _read_yaml(path, problems)
    if problems:
        raise WebConfigError(path, problems)
    config = _parse(document, path.parent, problems)
    if problems:
        raise WebConfigError(path, problems)
    return config


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice, instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        """Build a mapping, raising on a key given twice (merged-in keys may be overridden)."""
        seen = set()
        for key_node, _ in node.value:  # before merge keys are expanded into the node
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                break  # the base class reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path, problems: list[str]) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        problems.append(f"cannot read {path}: {error.strerror}")
        return None
    except UnicodeDecodeError:
        problems.append(f"cannot read {path}: not UTF-8 text")
        return None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or "cannot be parsed"
        problems.append(f"{path} is not valid YAML{where}: {_one_line(reason)}")
        return None


def _parse(document: object, base: Path, problems: list[str]) -> WebConfig:
    top = _section(document, "", problems)
    tls_section = _section(top.get("tls_server_config"), "tls_server_config", problems)
    http_section = _section(top.get("http_server_config"), "http_server_config", problems)
    if not isinstance(http_section.get("http2", False), (bool, type(None))):
        problems.append("http_server_config.http2: must be true or false")
    return WebConfig(
        tls=_tls(tls_section, base, problems) if tls_section else None,
        basic_auth_users=MappingProxyType(_users(top.get("basic_auth_users"), problems)),
        headers=MappingProxyType(_headers(http_section.get("headers"), problems)),
    )


def _section(value: object, name: str, problems: list[str]) -> dict[str, object]:
    """Return a mapping of known fields (empty if absent), reporting the fields it cannot use."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{name or '(top level)'}: must be a mapping")
        return {}
    for key in value:
        where = f"{name}.{_label(key)}" if name else _label(key)
        if key in _UNSUPPORTED_FIELDS[name]:
            problems.append(f"{where}: not supported by magnet-exporter")
        elif key not in _FIELDS[name]:
            problems.append(f"{where}: unknown field (expected {', '.join(_FIELDS[name])})")
    return {key: item for key, item in value.items() if key in _FIELDS[name]}


def _tls(section: dict[str, object], base: Path, problems: list[str]) -> TlsConfig | None:
    before = len(problems)
    cert_file = _file(section, "cert_file", base, problems, required=True)
    key_file = _file(section, "key_file", base, problems, required=True)
    client_ca_file = _file(section, "client_ca_file", base, problems, required=False)
    client_auth_type = _client_auth_type(section, problems)
    min_version = _tls_version(section, "min_version", "TLS12", problems)
    max_version = _tls_version(section, "max_version", "TLS13", problems)
    if min_version is not None and max_version is not None and min_version > max_version:
        problems.append("tls_server_config.min_version: is above max_version")
    if (
        len(problems) > before
        or cert_file is None
        or key_file is None
        or client_auth_type is None
        or min_version is None
        or max_version is None
    ):
        return None
    context = _ssl_context(cert_file, key_file, client_ca_file, problems)
    if context is None:
        return None
    context.verify_mode = CLIENT_AUTH_TYPES[client_auth_type]
    context.minimum_version = min_version
    context.maximum_version = max_version
    return TlsConfig(
        cert_file, key_file, client_ca_file, client_auth_type, min_version, max_version, context
    )


def _string(section: dict[str, object], name: str, where: str, problems: list[str]) -> str | None:
    """Return a string field, None if absent or blank (as in exporter-toolkit)."""
    value = section.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        problems.append(f"{where}.{name}: must be a string")
        return None
    return value


def _file(
    section: dict[str, object], name: str, base: Path, problems: list[str], *, required: bool
) -> Path | None:
    """Return a readable file named by a field, relative to the configuration file's folder."""
    value = _string(section, name, "tls_server_config", problems)
    if value is None:
        if required and not _given(section, name):
            problems.append(f"tls_server_config.{name}: required")
        return None
    path = base / value
    try:
        path.read_bytes()
    except OSError as error:
        problems.append(
            f"tls_server_config.{name}: cannot read {_label(str(path))}: {error.strerror}"
        )
        return None
    return path


def _given(section: dict[str, object], name: str) -> bool:
    return section.get(name) not in (None, "")


def _client_auth_type(section: dict[str, object], problems: list[str]) -> str | None:
    name = _string(section, "client_auth_type", "tls_server_config", problems) or "NoClientCert"
    where = "tls_server_config.client_auth_type"
    if name in _UNSUPPORTED_CLIENT_AUTH_TYPES:
        problems.append(
            f"{where}: {name} is not supported (Python's ssl cannot ask for a certificate "
            "without verifying it); use RequireAndVerifyClientCert with client_ca_file"
        )
        return None
    if name not in CLIENT_AUTH_TYPES:
        problems.append(f"{where}: {_label(name)} is not one of {', '.join(CLIENT_AUTH_TYPES)}")
        return None
    asks = CLIENT_AUTH_TYPES[name] != ssl.CERT_NONE
    if asks and not _given(section, "client_ca_file"):
        problems.append(f"tls_server_config.client_ca_file: required with {name}")
        return None
    if not asks and _given(section, "client_ca_file"):
        # As in exporter-toolkit: a CA that nothing is checked against is a mistake, not a lock.
        problems.append(
            "tls_server_config.client_ca_file: given, but client_auth_type is NoClientCert"
        )
        return None
    return name


def _tls_version(
    section: dict[str, object], name: str, default: str, problems: list[str]
) -> ssl.TLSVersion | None:
    value = _string(section, name, "tls_server_config", problems) or default
    if value not in TLS_VERSIONS:
        problems.append(
            f"tls_server_config.{name}: {_label(value)} is not one of {', '.join(TLS_VERSIONS)}"
        )
        return None
    return TLS_VERSIONS[value]


class _EncryptedKeyError(Exception):
    """The key file asks for a password, which the exporter has no way to be given."""


def _refuse_password() -> bytes:
    raise _EncryptedKeyError  # instead of OpenSSL prompting on the terminal


def _ssl_context(
    cert_file: Path, key_file: Path, client_ca_file: Path | None, problems: list[str]
) -> ssl.SSLContext | None:
    # Not ssl.create_default_context(): that would also trust the system CAs for client certs.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password=_refuse_password)
    except _EncryptedKeyError:
        problems.append(f"tls_server_config.key_file: {key_file} is encrypted; give an open key")
        return None
    except ssl.SSLError as error:
        problems.append(_key_pair_problem(cert_file, key_file, error))
        return None
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except ssl.SSLError:
            problems.append(
                f"tls_server_config.client_ca_file: {client_ca_file} holds no PEM certificate"
            )
            return None
    return context


def _key_pair_problem(cert_file: Path, key_file: Path, error: ssl.SSLError) -> str:
    """Say which of the two files is wrong: OpenSSL's error often does not."""
    if error.reason == "KEY_VALUES_MISMATCH":
        return f"tls_server_config.key_file: {key_file} is not the key of {cert_file}"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except ssl.SSLError:
        return f"tls_server_config.cert_file: {cert_file} holds no PEM certificate"
    return f"tls_server_config.key_file: {key_file} holds no PEM private key"


def _users(value: object, problems: list[str]) -> dict[str, bytes]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append("basic_auth_users: must be a mapping of user names to bcrypt hashes")
        return {}
    users = {}
    for user, hashed in value.items():
        where = f"basic_auth_users.{_label(user)}"
        if not isinstance(user, str) or not user.isprintable():
            problems.append(f"{where}: a user name must be a printable string (quote it)")
        elif ":" in user:
            problems.append(f"{where}: a user name cannot contain ':' in basic auth")
        elif not isinstance(hashed, str) or not _is_bcrypt_hash(hashed):
            # The value is never quoted: it could be a password written in the clear.
            problems.append(f"{where}: not a bcrypt hash ({_HTPASSWD_HINT})")
        else:
            users[user] = hashed.encode()
    return users


def _is_bcrypt_hash(value: str) -> bool:
    match = _BCRYPT_HASH.fullmatch(value)
    return match is not None and 4 <= int(match.group(1)) <= 31


def _headers(value: object, problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append("http_server_config.headers: must be a mapping of header names to values")
        return {}
    headers = {}
    for name, text in value.items():
        where = f"http_server_config.headers.{_label(name)}"
        if name not in HEADERS:
            problems.append(f"{where}: cannot be configured (only {', '.join(HEADERS)})")
        elif text is None or text == "":
            continue  # blank means unset, as in exporter-toolkit
        elif not isinstance(text, str) or not text.isprintable():
            problems.append(f"{where}: must be a one-line string")
        elif HEADERS[name] and text not in HEADERS[name]:
            problems.append(f"{where}: {_label(text)} is not one of {', '.join(HEADERS[name])}")
        else:
            headers[name] = text
    return headers


def _label(value: object) -> str:
    """Show a name from the file on one line, quoted only when it needs to be."""
    if isinstance(value, str) and value.isprintable() and value.strip() == value and value:
        return value
    return repr(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class BasicAuth:
    """Checks `Authorization: Basic` credentials against the configured bcrypt hashes.

    bcrypt is slow on purpose (about 60 ms at cost 10), and Prometheus sends the same
    credentials on every scrape, so a successful check is remembered: under a keyed hash of
    user and password, never the password itself. Failures are never remembered, so guessing
    always pays the full bcrypt price. Checks run one at a time, so a flood of wrong passwords
    takes one CPU at most; remembered credentials do not wait for them.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = {user.encode(): hashed for user, hashed in users.items()}
        # Unknown users are checked against this hash, at the highest cost in use, so that
        # the time of an answer does not reveal which users exist.
        cost = max((int(hashed[4:6]) for hashed in users.values()), default=4)
        self._decoy = bcrypt.hashpw(secrets.token_urlsafe(16).encode(), bcrypt.gensalt(cost))
        self._key = secrets.token_bytes(32)
        self._verified: set[bytes] = set()  # bounded: one entry per user and password
        self._bcrypt_lock = threading.Lock()

    def check(self, authorization: str | None) -> bool:
        """Tell whether an `Authorization` header value holds valid credentials."""
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        fingerprint = hmac.digest(self._key, user + b":" + password, "sha256")
        if fingerprint in self._verified:
            return True
        if not self._verify(user, password):
            return False
        self._verified.add(fingerprint)
        return True

    def _verify(self, user: bytes, password: bytes) -> bool:
        hashed = self._users.get(user)
        known = hashed is not None and len(password) <= _BCRYPT_MAX_PASSWORD_BYTES
        if hashed is None or not known:
            hashed = self._decoy  # one bcrypt check even when the answer is no: see __init__
        with self._bcrypt_lock:
            matches = bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD_BYTES], hashed)
        return known and matches


def _basic_credentials(authorization: str | None) -> tuple[bytes, bytes] | None:
    """Return (user, password) from an `Authorization: Basic` value, None if it is not one."""
    if authorization is None:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        # WSGI hands headers over as latin-1 text: encoding gives back the bytes sent.
        decoded = base64.b64decode(encoded.strip().encode("latin-1"), validate=True)
    except ValueError:
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None
