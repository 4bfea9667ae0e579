"""The web configuration file: TLS, basic auth and headers, over real loopback connections."""

from __future__ import annotations

import base64
import dataclasses
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
import trustme
import yaml
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from prometheus_client import CollectorRegistry, Gauge

from magnet_exporter.server import ExporterApp, HttpServer
from magnet_exporter.webconfig import BasicAuth, WebConfig, WebConfigError, load_web_config

# Keep hypothesis' `.hypothesis` folder out of the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "magnet-exporter-hypothesis")

PASSWORD = "correct horse battery staple"
FAST_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


@dataclasses.dataclass
class Pki:
    """A CA made for the test, the server's certificate and key, and a client certificate."""

    ca: trustme.CA
    folder: Path
    cert: Path
    key: Path
    ca_file: Path
    client: trustme.LeafCert

    def client_context(self, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        """A client context that trusts the test CA, presenting `cert` if given."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pki(ca: trustme.CA, tmp_path: Path) -> Pki:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    leaf.private_key_pem.write_to_path(tmp_path / "key.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    client = ca.issue_cert("prometheus@example.org")
    return Pki(
        ca, tmp_path, tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem", client
    )


def write_config(folder: Path, text: str) -> Path:
    path = folder / "web.yml"
    path.write_text(text)
    return path


TLS = "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"


@pytest.fixture
def serve() -> Iterator[Callable[[WebConfig], str]]:
    """Serve a small exporter app with a web configuration; return its base URL."""
    servers: list[HttpServer] = []

    def start(config: WebConfig) -> str:
        registry = CollectorRegistry()
        Gauge("magnet_test_value", "A value to find on /metrics.", registry=registry).set(42)
        server = HttpServer(ExporterApp(registry, lambda: {}), "127.0.0.1", 0, config)
        servers.append(server)
        server.start()
        return f"{server.scheme}://127.0.0.1:{server.port}"

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def handshake(url: str, context: ssl.SSLContext) -> ssl.SSLSocket:
    """Connect with the standard library, to see the TLS session itself."""
    port = int(url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


# TLS


def test_https_serves_metrics_with_the_configured_certificate(
    pki: Pki, serve: Callable[[WebConfig], str]
) -> None:
    url = serve(load_web_config(write_config(pki.folder, TLS)))
    assert url.startswith("https://")
    response = httpx.get(f"{url}/metrics", verify=pki.client_context(), timeout=5)
    assert response.status_code == 200
    assert "magnet_test_value 42.0" in response.text
    with handshake(url, pki.client_context()) as tls:
        served = tls.getpeercert(binary_form=True)
    assert served == ssl.PEM_cert_to_DER_cert(pki.cert.read_text())


def test_a_client_that_does_not_trust_the_ca_is_refused(
    pki: Pki, serve: Callable[[WebConfig], str]
) -> None:
    url = serve(load_web_config(write_config(pki.folder, TLS)))
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/metrics", timeout=5)


def test_plain_http_to_the_tls_port_fails(pki: Pki, serve: Callable[[WebConfig], str]) -> None:
    url = serve(load_web_config(write_config(pki.folder, TLS)))
    plain = url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/metrics", timeout=5)
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        answer = raw.recv(4096)
    assert b"magnet_test_value" not in answer
    assert not answer.startswith(b"HTTP/")
    # The server is still serving TLS.
    assert httpx.get(f"{url}/metrics", verify=pki.client_context(), timeout=5).status_code == 200


def test_a_client_stuck_before_its_handshake_does_not_block_others(pki: Pki) -> None:
    server = HttpServer(
        ExporterApp(CollectorRegistry(), lambda: {}),
        "127.0.0.1",
        0,
        load_web_config(write_config(pki.folder, TLS)),
    )
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            # This connection never says anything. Were handshakes done in the accept loop,
            # the next request would wait for its 10-second handshake timeout.
            started = time.monotonic()
            response = httpx.get(
                f"https://127.0.0.1:{server.port}/-/healthy",
                verify=pki.client_context(),
                timeout=3,
            )
            assert response.status_code == 200
            assert time.monotonic() - started < 2
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 2
    finally:
        server.stop()


def test_client_certificates_required_and_verified(
    pki: Pki, serve: Callable[[WebConfig], str]
) -> None:
    text = TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n"
    url = serve(load_web_config(write_config(pki.folder, text)))
    with_cert = pki.client_context(pki.client)
    assert httpx.get(f"{url}/metrics", verify=with_cert, timeout=5).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/metrics", verify=pki.client_context(), timeout=5)
    stranger = trustme.CA().issue_cert("mallory@example.org")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/metrics", verify=pki.client_context(stranger), timeout=5)


def test_client_certificates_verified_if_given(pki: Pki, serve: Callable[[WebConfig], str]) -> None:
    text = TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.pem\n"
    url = serve(load_web_config(write_config(pki.folder, text)))
    for context in (pki.client_context(), pki.client_context(pki.client)):
        assert httpx.get(f"{url}/metrics", verify=context, timeout=5).status_code == 200
    stranger = trustme.CA().issue_cert("mallory@example.org")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/metrics", verify=pki.client_context(stranger), timeout=5)


def test_min_version(pki: Pki, serve: Callable[[WebConfig], str]) -> None:
    url = serve(load_web_config(write_config(pki.folder, TLS + "  min_version: TLS13\n")))
    with handshake(url, pki.client_context()) as tls:
        assert tls.version() == "TLSv1.3"
    old_client = pki.client_context()
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError), handshake(url, old_client):
        pass


def test_default_versions_and_max_version(pki: Pki, serve: Callable[[WebConfig], str]) -> None:
    config = load_web_config(write_config(pki.folder, TLS))
    assert config.tls is not None
    assert (config.tls.min_version, config.tls.max_version) == (
        ssl.TLSVersion.TLSv1_2,
        ssl.TLSVersion.TLSv1_3,
    )
    url = serve(load_web_config(write_config(pki.folder, TLS + "  max_version: TLS12\n")))
    with handshake(url, pki.client_context()) as tls:
        assert tls.version() == "TLSv1.2"


def test_files_are_found_next_to_the_configuration_file(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_web_config(write_config(pki.folder, TLS))
    assert config.tls is not None
    assert config.tls.cert_file == pki.cert


# Basic auth


def auth_config(users: str = f"  alice: {FAST_HASH}\n") -> str:
    return f"basic_auth_users:\n{users}"


def test_basic_auth(pki: Pki, serve: Callable[[WebConfig], str]) -> None:
    url = serve(load_web_config(write_config(pki.folder, TLS + auth_config())))
    with httpx.Client(base_url=url, verify=pki.client_context(), timeout=5) as client:
        for credentials in (None, ("alice", "wrong"), ("bob", PASSWORD), ("Alice", PASSWORD)):
            for path in ("/metrics", "/", "/-/ready", "/no-such-page", "/-/healthy/"):
                refused = client.get(path, auth=credentials)
                assert refused.status_code == 401, (credentials, path)
                assert refused.headers["www-authenticate"] == 'Basic realm="magnet-exporter"'
                assert "magnet_test_value" not in refused.text
        assert client.get("/-/healthy").status_code == 200
        good = ("alice", PASSWORD)
        metrics = client.get("/metrics", auth=good)
        assert metrics.status_code == 200
        assert "magnet_test_value 42.0" in metrics.text
        assert client.get("/", auth=good).status_code == 200
        assert client.get("/no-such-page", auth=good).status_code == 404


@pytest.mark.parametrize(
    "header",
    [
        "Bearer " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(),
        "Basic " + base64.b64encode(f"alice{PASSWORD}".encode()).decode(),  # no colon
        "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()[:-2] + "!!",
        "Basic",
        "",
    ],
)
def test_malformed_authorization_is_refused(
    tmp_path: Path, serve: Callable[[WebConfig], str], header: str
) -> None:
    url = serve(load_web_config(write_config(tmp_path, auth_config())))
    response = httpx.get(f"{url}/metrics", headers={"Authorization": header}, timeout=5)
    assert response.status_code == 401


def test_basic_auth_scheme_is_case_insensitive_and_passwords_may_be_utf8(
    tmp_path: Path, serve: Callable[[WebConfig], str]
) -> None:
    password = "pässwörd ✓"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    url = serve(load_web_config(write_config(tmp_path, auth_config(f"  zoë: '{hashed}'\n"))))
    token = base64.b64encode(f"zoë:{password}".encode()).decode()
    for scheme in ("Basic", "basic", "BASIC"):
        response = httpx.get(
            f"{url}/metrics", headers={"Authorization": f"{scheme} {token}"}, timeout=5
        )
        assert response.status_code == 200, scheme


def test_htpasswd_2y_hashes_are_accepted() -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).replace(b"$2b$", b"$2y$", 1)
    auth = BasicAuth({"alice": hashed})
    assert auth.check(basic("alice", PASSWORD))
    assert not auth.check(basic("alice", "wrong"))


def basic(user: str, password: str | bytes) -> str:
    secret = password if isinstance(password, bytes) else password.encode()
    return "Basic " + base64.b64encode(user.encode() + b":" + secret).decode("latin-1")


def test_passwords_beyond_bcrypts_72_bytes_are_refused() -> None:
    # bcrypt only looks at 72 bytes: any suffix would pass, were the password cut short.
    password = b"x" * 72
    auth = BasicAuth({"alice": bcrypt.hashpw(password, bcrypt.gensalt(4))})
    assert auth.check(basic("alice", password))
    assert not auth.check(basic("alice", password + b"anything"))


def timed(check: Callable[[], bool], expected: bool) -> float:
    started = time.perf_counter()
    assert check() is expected
    return time.perf_counter() - started


BCRYPT_FLOOR_SECONDS = 0.01
"""A check at cost 10 takes tens of milliseconds on current CPUs, more on a busy machine."""


def test_unknown_users_cost_a_bcrypt_check_too() -> None:
    auth = BasicAuth({"alice": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10))})
    known = min(timed(lambda: auth.check(basic("alice", "wrong")), False) for _ in range(2))
    unknown = min(timed(lambda: auth.check(basic("mallory", "wrong")), False) for _ in range(2))
    assert known > BCRYPT_FLOOR_SECONDS
    assert unknown > BCRYPT_FLOOR_SECONDS  # without the decoy: microseconds


def test_a_successful_check_is_remembered_and_a_failed_one_is_not() -> None:
    auth = BasicAuth({"alice": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10))})
    assert timed(lambda: auth.check(basic("alice", PASSWORD)), True) > BCRYPT_FLOOR_SECONDS
    remembered = min(timed(lambda: auth.check(basic("alice", PASSWORD)), True) for _ in range(3))
    assert remembered < 0.002
    # Every wrong guess pays again, also the same one twice.
    wrong = min(timed(lambda: auth.check(basic("alice", PASSWORD + "!")), False) for _ in range(2))
    assert wrong > BCRYPT_FLOOR_SECONDS


# Headers


def test_configured_headers_are_on_every_answer(
    pki: Pki, serve: Callable[[WebConfig], str]
) -> None:
    text = (
        TLS
        + auth_config()
        + (
            "http_server_config:\n"
            "  headers:\n"
            "    X-Frame-Options: deny\n"
            "    X-Content-Type-Options: nosniff\n"
            "    Strict-Transport-Security: max-age=31536000\n"
            "    Content-Security-Policy: ''\n"
        )
    )
    url = serve(load_web_config(write_config(pki.folder, text)))
    with httpx.Client(base_url=url, verify=pki.client_context(), timeout=5) as client:
        answers = [
            client.get("/metrics", auth=("alice", PASSWORD)),
            client.get("/", auth=("alice", PASSWORD)),
            client.get("/nope", auth=("alice", PASSWORD)),
            client.get("/metrics"),
            client.get("/-/healthy"),
        ]
    assert [answer.status_code for answer in answers] == [200, 200, 404, 401, 200]
    for answer in answers:
        assert answer.headers["x-frame-options"] == "deny"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["strict-transport-security"] == "max-age=31536000"
        assert "content-security-policy" not in answer.headers  # blank means unset


def test_headers_without_tls_or_auth(tmp_path: Path, serve: Callable[[WebConfig], str]) -> None:
    text = "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: sameorigin\n"
    url = serve(load_web_config(write_config(tmp_path, text)))
    response = httpx.get(f"{url}/metrics", timeout=5)
    assert url.startswith("http://")
    assert response.status_code == 200
    assert response.headers["x-frame-options"] == "sameorigin"


def test_an_empty_file_changes_nothing(tmp_path: Path, serve: Callable[[WebConfig], str]) -> None:
    config = load_web_config(write_config(tmp_path, "# nothing configured\n"))
    assert config == WebConfig()
    url = serve(config)
    assert httpx.get(f"{url}/metrics", timeout=5).status_code == 200


# Bad files


def encrypted_key(pki: Pki) -> Path:
    key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    path = pki.folder / "encrypted.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


def other_key(pki: Pki) -> Path:
    path = pki.folder / "other-key.pem"
    pki.ca.issue_cert("other.example").private_key_pem.write_to_path(path)
    return path


def garbage(pki: Pki) -> Path:
    path = pki.folder / "garbage.pem"
    path.write_text("this is not PEM\n")
    return path


BAD_FILES: list[tuple[str, Callable[[Pki], str], Callable[[Pki], str]]] = [
    (
        "bad YAML",
        lambda p: "tls_server_config: [cert_file\n",
        lambda p: (
            f"{p.folder / 'web.yml'} is not valid YAML at line 2, column 1: "
            "expected ',' or ']', but got '<stream end>'"
        ),
    ),
    (
        "duplicate key",
        lambda p: TLS + "  cert_file: cert.pem\n",
        lambda p: (
            f"{p.folder / 'web.yml'} is not valid YAML at line 4, column 3: "
            "duplicate key 'cert_file'"
        ),
    ),
    ("not a mapping", lambda p: "- cert.pem\n", lambda p: "(top level): must be a mapping"),
    (
        "unknown key",
        lambda p: "tls_config:\n  cert_file: cert.pem\n",
        lambda p: (
            "tls_config: unknown field "
            "(expected tls_server_config, http_server_config, basic_auth_users)"
        ),
    ),
    (
        "unknown TLS key",
        lambda p: TLS + "  ca_file: ca.pem\n",
        lambda p: (
            "tls_server_config.ca_file: unknown field (expected cert_file, key_file, "
            "client_ca_file, client_auth_type, min_version, max_version)"
        ),
    ),
    (
        "unsupported key",
        lambda p: "rate_limit:\n  interval: 1s\n  burst: 5\n",
        lambda p: "rate_limit: not supported by magnet-exporter",
    ),
    (
        "bad client_auth_type",
        lambda p: TLS + "  client_auth_type: Sometimes\n",
        lambda p: (
            "tls_server_config.client_auth_type: Sometimes is not one of NoClientCert, "
            "VerifyClientCertIfGiven, RequireAndVerifyClientCert"
        ),
    ),
    (
        "unsupported client_auth_type",
        lambda p: TLS + "  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.pem\n",
        lambda p: (
            "tls_server_config.client_auth_type: RequireAnyClientCert is not supported "
            "(Python's ssl cannot ask for a certificate without verifying it); "
            "use RequireAndVerifyClientCert with client_ca_file"
        ),
    ),
    (
        "client certificates without a CA",
        lambda p: TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
        lambda p: "tls_server_config.client_ca_file: required with RequireAndVerifyClientCert",
    ),
    (
        "a CA without client certificates",
        lambda p: TLS + "  client_ca_file: ca.pem\n",
        lambda p: "tls_server_config.client_ca_file: given, but client_auth_type is NoClientCert",
    ),
    (
        "no key_file",
        lambda p: "tls_server_config:\n  cert_file: cert.pem\n",
        lambda p: "tls_server_config.key_file: required",
    ),
    (
        "missing certificate",
        lambda p: "tls_server_config:\n  cert_file: gone.pem\n  key_file: key.pem\n",
        lambda p: (
            f"tls_server_config.cert_file: cannot read {p.folder / 'gone.pem'}: "
            "No such file or directory"
        ),
    ),
    (
        "a folder as certificate",
        lambda p: f"tls_server_config:\n  cert_file: {p.folder}\n  key_file: key.pem\n",
        lambda p: f"tls_server_config.cert_file: cannot read {p.folder}: Is a directory",
    ),
    (
        "unreadable certificate",
        lambda p: f"tls_server_config:\n  cert_file: {garbage(p)}\n  key_file: key.pem\n",
        lambda p: (
            f"tls_server_config.cert_file: {p.folder / 'garbage.pem'} holds no PEM certificate"
        ),
    ),
    (
        "unreadable key",
        lambda p: f"tls_server_config:\n  cert_file: cert.pem\n  key_file: {garbage(p)}\n",
        lambda p: (
            f"tls_server_config.key_file: {p.folder / 'garbage.pem'} holds no PEM private key"
        ),
    ),
    (
        "key not matching the certificate",
        lambda p: f"tls_server_config:\n  cert_file: cert.pem\n  key_file: {other_key(p)}\n",
        lambda p: (
            f"tls_server_config.key_file: {p.folder / 'other-key.pem'} is not the key of {p.cert}"
        ),
    ),
    (
        "encrypted key",
        lambda p: f"tls_server_config:\n  cert_file: cert.pem\n  key_file: {encrypted_key(p)}\n",
        lambda p: (
            f"tls_server_config.key_file: {p.folder / 'encrypted.pem'} is encrypted; "
            "give an open key"
        ),
    ),
    (
        "unreadable client CA",
        lambda p: (
            TLS + "  client_auth_type: RequireAndVerifyClientCert\n"
            f"  client_ca_file: {garbage(p)}\n"
        ),
        lambda p: (
            f"tls_server_config.client_ca_file: {p.folder / 'garbage.pem'} holds no PEM certificate"
        ),
    ),
    (
        "bad min_version",
        lambda p: TLS + "  min_version: TLS14\n",
        lambda p: "tls_server_config.min_version: TLS14 is not one of TLS10, TLS11, TLS12, TLS13",
    ),
    (
        "min_version above max_version",
        lambda p: TLS + "  min_version: TLS13\n  max_version: TLS12\n",
        lambda p: "tls_server_config.min_version: is above max_version",
    ),
    (
        "a password that is not a bcrypt hash",
        lambda p: "basic_auth_users:\n  alice: hunter2\n",
        lambda p: (
            "basic_auth_users.alice: not a bcrypt hash "
            "(make one with: htpasswd -nBC 10 '' | tr -d ':\\n')"
        ),
    ),
    (
        "a user name with a colon",
        lambda p: f"basic_auth_users:\n  'al:ice': '{FAST_HASH}'\n",
        lambda p: "basic_auth_users.al:ice: a user name cannot contain ':' in basic auth",
    ),
    (
        "a header that cannot be set",
        lambda p: "http_server_config:\n  headers:\n    Server: magnet\n",
        lambda p: (
            "http_server_config.headers.Server: cannot be configured (only "
            "Content-Security-Policy, Strict-Transport-Security, X-Content-Type-Options, "
            "X-Frame-Options, X-XSS-Protection)"
        ),
    ),
    (
        "a header value out of its list",
        lambda p: "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        lambda p: (
            "http_server_config.headers.X-Frame-Options: allow is not one of deny, sameorigin"
        ),
    ),
    (
        "http2 not a boolean",
        lambda p: "http_server_config:\n  http2: maybe\n",
        lambda p: "http_server_config.http2: must be true or false",
    ),
]


@pytest.mark.parametrize(
    ("content", "problem"),
    [pytest.param(content, problem, id=name) for name, content, problem in BAD_FILES],
)
def test_bad_files(pki: Pki, content: Callable[[Pki], str], problem: Callable[[Pki], str]) -> None:
    path = write_config(pki.folder, content(pki))
    with pytest.raises(WebConfigError) as raised:
        load_web_config(path)
    assert raised.value.problems == [problem(pki)]
    assert raised.value.path == path


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError) as raised:
        load_web_config(tmp_path / "web.yml")
    assert raised.value.problems == [
        f"cannot read {tmp_path / 'web.yml'}: No such file or directory"
    ]


def test_every_problem_is_reported_at_once_one_line_each(pki: Pki) -> None:
    text = (
        "tls_server_config:\n"
        "  cert_file: gone.pem\n"
        "  key_file: key.pem\n"
        "  client_auth_type: Sometimes\n"
        "  min_version: TLS9\n"
        "basic_auth_users:\n"
        "  alice: hunter2\n"
        '  "bob\\nsmith": hunter3\n'  # a line break in a user name
        "surprise: true\n"
    )
    with pytest.raises(WebConfigError) as raised:
        load_web_config(write_config(pki.folder, text))
    problems = raised.value.problems
    assert [problem.split(":")[0] for problem in problems] == [
        "surprise",
        "tls_server_config.cert_file",
        "tls_server_config.client_auth_type",
        "tls_server_config.min_version",
        "basic_auth_users.alice",
        "basic_auth_users.'bob\\nsmith'",
    ]
    assert all("\n" not in problem for problem in problems)
    # A password written in the clear by mistake is never repeated.
    assert "hunter" not in str(raised.value)


# Anything else in the file: a WebConfig or a WebConfigError, never another exception.

NAMES = (
    "tls_server_config",
    "http_server_config",
    "basic_auth_users",
    "rate_limit",
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "cert",
    "headers",
    "http2",
    "X-Frame-Options",
    "alice",
)
VALUES = (
    "cert.pem",
    "key.pem",
    "ca.pem",
    "web.yml",
    ".",
    "TLS13",
    "TLS10",
    "RequireAndVerifyClientCert",
    "VerifyClientCertIfGiven",
    "RequestClientCert",
    "deny",
    FAST_HASH,
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(VALUES)
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=8) | st.integers(), children)
    ),
    max_leaves=16,
)


@pytest.fixture(scope="module")
def fuzz_folder(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(folder / "cert.pem")
    leaf.private_key_pem.write_to_path(folder / "key.pem")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    return folder


def problems_of(folder: Path, text: str) -> list[str]:
    """The problems of a file, none if it loads; any other exception fails the test."""
    try:
        load_web_config(write_config(folder, text))
    except WebConfigError as error:
        return error.problems
    return []


def assert_one_line_each(problems: list[str]) -> None:
    for problem in problems:
        assert problem
        assert problem.isprintable(), problem


FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(document=DOCUMENTS)
def test_any_document_loads_or_gives_problems(fuzz_folder: Path, document: object) -> None:
    assert_one_line_each(problems_of(fuzz_folder, yaml.safe_dump({"tls_server_config": document})))
    assert_one_line_each(problems_of(fuzz_folder, yaml.safe_dump(document)))


@FUZZ
@given(text=st.text(max_size=200))
@example(text="? [a, b]\n: 1\n")  # a list as a key
@example(text="a: &x {k: 1}\nb:\n  <<: *x\n  k: 2\n")  # a merge key, overridden
def test_any_text_loads_or_gives_problems(fuzz_folder: Path, text: str) -> None:
    assert_one_line_each(problems_of(fuzz_folder, text))
