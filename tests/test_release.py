"""Proofs for a release: the dependency lock, the built packages, the changelog.

The lock (requirements.lock) pins every runtime dependency of pyproject.toml within its range,
with hashes, for the image's Python, and holds nothing else: checked here from the lock
itself, without the network. That the pinned versions' own metadata agrees (everything they
need is pinned, nothing pinned is unneeded) is proven by installing the lock the way the
image does, in tests/test_deploy.py. The sdist and the wheel are built with `python -m build`
(the wheel from the sdist, as an index user's rebuild would) and checked as the package index
would show them; the changelog has a section for the version being released.
"""

from __future__ import annotations

import email.parser
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from datetime import date
from email.message import Message
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from test_deploy import builder_and_runtime, package_version
from test_docs import github_anchors

try:
    import tomllib
except ImportError:  # Python 3.10: build's own dependency
    import tomli as tomllib  # type: ignore[no-redef]

LOCK_FILE = REPO_ROOT / "requirements.lock"
PYPROJECT = REPO_ROOT / "pyproject.toml"
CHANGELOG = REPO_ROOT / "CHANGELOG.md"
README = REPO_ROOT / "README.md"
DEPLOYMENT_DOC = REPO_ROOT / "docs" / "deployment.md"
REPOSITORY = "https://github.com/magnet-exporter/magnet-exporter"
# How the lock tool names the project in its `# via` comments.
PROJECT_VIA = "magnet-exporter (pyproject.toml)"


def project() -> dict[str, object]:
    data = tomllib.loads(PYPROJECT.read_text())["project"]
    assert isinstance(data, dict)
    return data


def runtime_requirements() -> dict[str, Requirement]:
    dependencies = project()["dependencies"]
    assert isinstance(dependencies, list)
    requirements = [Requirement(text) for text in dependencies]
    return {canonicalize_name(r.name): r for r in requirements}


# --------------------------------------------------------------------------------- lock


@dataclass
class Pin:
    name: str
    version: Version
    marker: str | None
    hashes: list[str]
    via: set[str] = field(default_factory=set)


def read_lock(text: str) -> dict[str, Pin]:
    """The entries of a hash-pinned requirements file with the lock tool's `# via` notes."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    listing_via = False
    logical = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            comment = stripped[1:].strip()
            if current is not None and comment.startswith("via"):
                rest = comment[len("via") :].strip()
                listing_via = not rest
                if rest:
                    current.via.add(rest)
            elif current is not None and listing_via and comment:
                current.via.add(comment)
            continue
        listing_via = False
        if not stripped:
            continue
        logical += " " + stripped.removesuffix("\\")
        if stripped.endswith("\\"):
            continue
        words, logical = logical.split(), ""
        hashes = [w.removeprefix("--hash=") for w in words if w.startswith("--hash=")]
        spec = [w for w in words if not w.startswith("--hash=")]
        assert not [w for w in spec if w.startswith("-")], (
            f"requirements.lock line {number}: only pinned requirements with hashes: {spec}"
        )
        requirement = Requirement(" ".join(spec))
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1, f"line {number}: pin {requirement.name} with one =="
        assert specifiers[0].operator == "==", f"line {number}: pin {requirement.name} with =="
        assert "*" not in specifiers[0].version, f"line {number}: {requirement} is no pin"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"line {number}: {name} is pinned twice"
        current = Pin(
            name=name,
            version=Version(specifiers[0].version),
            marker=str(requirement.marker) if requirement.marker else None,
            hashes=hashes,
        )
        pins[name] = current
    assert not logical.strip(), "requirements.lock ends inside a continued line"
    return pins


def lock_command() -> list[str]:
    """The command that made the lock, from the lock tool's header."""
    for line in LOCK_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        words = shlex.split(line.lstrip("#").strip())
        if words[:3] == ["uv", "pip", "compile"]:
            return words
    raise AssertionError("requirements.lock does not say which `uv pip compile` made it")


def option(words: list[str], *names: str) -> str | None:
    for index, word in enumerate(words):
        for name in names:
            if word == name and index + 1 < len(words):
                return words[index + 1]
            if word.startswith(f"{name}="):
                return word.split("=", 1)[1]
    return None


def test_read_lock_reads_pins_hashes_and_why_each_is_there() -> None:
    pins = read_lock(
        "# header\n"
        "a-b==1.0 \\\n"
        "    --hash=sha256:" + "0" * 64 + " \\\n"
        "    --hash=sha256:" + "1" * 64 + "\n"
        "    # via magnet-exporter (pyproject.toml)\n"
        "c==2.0 ; python_version < '3.11' \\\n"
        "    --hash=sha256:" + "2" * 64 + "\n"
        "    # via\n"
        "    #   a-b\n"
        "    #   magnet-exporter (pyproject.toml)\n"
    )
    assert set(pins) == {"a-b", "c"}
    assert pins["a-b"].version == Version("1.0")
    assert len(pins["a-b"].hashes) == 2
    assert pins["a-b"].via == {PROJECT_VIA}
    assert pins["c"].via == {"a-b", PROJECT_VIA}
    assert pins["c"].marker == 'python_version < "3.11"'
    for unpinned in ("a>=1.0 \\\n    --hash=sha256:00\n", "a==1.* \\\n    --hash=sha256:00\n"):
        with pytest.raises(AssertionError):
            read_lock(unpinned)


def test_lock_pins_every_runtime_dependency_within_its_range_with_hashes() -> None:
    pins = read_lock(LOCK_FILE.read_text())
    requirements = runtime_requirements()
    assert "h11" in requirements, "h11 (the HTTP/1.1 parser) is a declared runtime dependency"
    for name, requirement in requirements.items():
        assert name in pins, f"{requirement} is not pinned in requirements.lock"
        pin = pins[name]
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"requirements.lock pins {name}=={pin.version}, outside {requirement}"
        )
    for pin in pins.values():
        assert pin.hashes, f"{pin.name} has no hash in requirements.lock"
        for digest in pin.hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{pin.name}: {digest}"
        assert len(set(pin.hashes)) == len(pin.hashes), f"{pin.name} lists a hash twice"


def test_lock_holds_nothing_the_dependencies_do_not_need() -> None:
    pins = read_lock(LOCK_FILE.read_text())
    requirements = runtime_requirements()
    direct = {name for name, pin in pins.items() if PROJECT_VIA in pin.via}
    assert direct == set(requirements), (
        "the lock's direct dependencies differ from pyproject.toml's: "
        f"only in the lock {sorted(direct - set(requirements))}, "
        f"only in pyproject.toml {sorted(set(requirements) - direct)}"
    )
    for pin in pins.values():
        assert pin.via, f"requirements.lock does not say why it holds {pin.name}"
        unknown = {v for v in pin.via if v != PROJECT_VIA and canonicalize_name(v) not in pins}
        assert not unknown, f"{pin.name} is there for {sorted(unknown)}, which the lock lacks"
    # Every pin is reached from a declared dependency through what needs it.
    needs: dict[str, set[str]] = {name: set() for name in pins}
    for pin in pins.values():
        for parent in pin.via - {PROJECT_VIA}:
            needs[canonicalize_name(parent)].add(pin.name)
    reached, todo = set(), sorted(direct)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(needs[name])
    assert reached == set(pins), f"needed by no dependency: {sorted(set(pins) - reached)}"


def test_lock_is_for_the_image_python_and_updated_by_the_documented_command() -> None:
    command = lock_command()
    assert "pyproject.toml" in command, "the lock is compiled from pyproject.toml"
    assert "--generate-hashes" in command
    assert option(command, "-o", "--output-file") == LOCK_FILE.name
    _, runtime = builder_and_runtime()
    image_python = re.match(r"python:(\d+\.\d+)\.", runtime.base)
    assert image_python, runtime.base
    assert option(command, "--python-version", "-p") == image_python.group(1), (
        f"the lock is for Python {option(command, '--python-version', '-p')}, "
        f"the image runs {image_python.group(1)}"
    )
    assert option(command, "--python-platform") == "linux", "the image runs on Linux"

    documented = [
        shlex.split(line.strip())
        for block in re.findall(r"```(?:\w+)?\n(.*?)```", DEPLOYMENT_DOC.read_text(), re.DOTALL)
        for line in block.splitlines()
        if line.strip().startswith("uv pip compile")
    ]
    assert documented, "docs/deployment.md does not show how to update the lock"
    for words in documented:
        assert "--upgrade" in words, "the documented update takes the newest allowed versions"
        assert [w for w in words if w != "--upgrade"] == command, (
            f"docs/deployment.md's command {shlex.join(words)} is not the one that made "
            f"the lock: {shlex.join(command)}"
        )


# ---------------------------------------------------------------------------- changelog


VERSION_HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\](?: - (?P<date>\S+))?\s*$", re.MULTILINE)
CHANGE_TYPES = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def changelog_sections(text: str) -> dict[str, str]:
    """The body of each `## [version]` section, by version."""
    matches = list(VERSION_HEADING.finditer(text))
    sections = {}
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        sections[match.group("version")] = text[match.end() : end]
    return sections


def test_changelog_has_a_section_for_the_package_version() -> None:
    text = CHANGELOG.read_text()
    assert text.startswith("# Changelog\n")
    assert "https://keepachangelog.com/" in text, "say which format the changelog follows"
    headings = list(VERSION_HEADING.finditer(text))
    assert headings, "the changelog has no version sections"
    assert headings[0].group("version") == "Unreleased", "## [Unreleased] comes first"
    releases = headings[1:]
    versions = [Version(h.group("version")) for h in releases]
    assert versions == sorted(versions, reverse=True), "versions newest first"
    for heading in releases:
        assert heading.group("date"), f"## [{heading.group('version')}] has no date"
        date.fromisoformat(heading.group("date"))

    sections = changelog_sections(text)
    version = package_version()
    assert version in sections, f"CHANGELOG.md has no section for {version} (__init__.py)"
    body = sections[version]
    types = re.findall(r"^### (.+?)\s*$", body, re.MULTILINE)
    assert types, f"the {version} section names no change"
    assert set(types) <= CHANGE_TYPES, f"not a Keep a Changelog type: {set(types) - CHANGE_TYPES}"
    assert re.search(r"^- ", body, re.MULTILINE), f"the {version} section lists nothing"
    for name in sections:
        assert re.search(rf"^\[{re.escape(name)}\]: https://\S+$", text, re.MULTILINE), (
            f"the changelog has no link for [{name}]"
        )


# ---------------------------------------------------------------------------- packages


@dataclass
class Built:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The sdist and the wheel as `python -m build` makes them (the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"python -m build failed:\n{result.stdout}\n{result.stderr}"
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Built(sdist=sdist, wheel=wheel)


def metadata(text: str) -> Message:
    return email.parser.Parser().parsestr(text)


def test_sdist_holds_what_a_rebuild_needs_and_wheel_the_package(built: Built) -> None:
    version = package_version()
    prefix = f"magnet_exporter-{version}/"
    with tarfile.open(built.sdist) as archive:
        members = [m for m in archive.getmembers() if m.isfile()]
        names = {m.name.removeprefix(prefix) for m in members}
        assert all(m.name.startswith(prefix) for m in members)
        pkg_info = archive.extractfile(f"{prefix}PKG-INFO")
        assert pkg_info is not None
        sdist_metadata = metadata(pkg_info.read().decode())
    sources = {
        p.relative_to(REPO_ROOT).as_posix()
        for p in (REPO_ROOT / "src" / "magnet_exporter").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    # .gitignore: hatchling always adds it, so that a rebuild leaves out what git ignores.
    expected = {"PKG-INFO", "pyproject.toml", "README.md", "LICENSE", ".gitignore", *sources}
    assert names == expected, (
        f"the sdist holds more: {sorted(names - expected)}; lacks: {sorted(expected - names)}"
    )

    with zipfile.ZipFile(built.wheel) as archive:
        wheel_names = archive.namelist()
        wheel_metadata = metadata(
            archive.read(f"magnet_exporter-{version}.dist-info/METADATA").decode()
        )
        entry_points = archive.read(f"magnet_exporter-{version}.dist-info/entry_points.txt")
    stray = [n for n in wheel_names if not n.startswith(("magnet_exporter/", "magnet_exporter-"))]
    assert not stray, f"the wheel carries more than the package: {stray}"
    assert {f"magnet_exporter/{Path(s).name}" for s in sources} <= set(wheel_names)
    assert f"magnet_exporter-{version}.dist-info/licenses/LICENSE" in wheel_names
    assert "magnet-exporter = magnet_exporter.cli:main" in entry_points.decode()

    for meta in (sdist_metadata, wheel_metadata):
        assert meta["Name"] == "magnet-exporter"
        assert meta["Version"] == version
        assert meta["License-Expression"] == project()["license"]
        assert meta.get_all("License-File") == ["LICENSE"]
        assert meta["Description-Content-Type"] == "text/markdown"
        runtime = {
            str(Requirement(r)) for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r
        }
        assert runtime == {str(r) for r in runtime_requirements().values()}
        urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
        assert urls.get("Source") == REPOSITORY
        assert all(url.startswith(REPOSITORY) for url in urls.values()), urls
    assert sdist_metadata.get_payload() == wheel_metadata.get_payload()

    twine = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(built.sdist), str(built.wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert twine.returncode == 0, twine.stdout + twine.stderr


LINK_PATTERNS = (
    r"\]\(\s*<?([^)\s>]+)",  # [text](target)
    r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$",  # [label]: target
    r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]+)>",  # <scheme:...>
    r"(?:href|src)\s*=\s*[\"']([^\"']+)",  # HTML
)


def test_long_description_has_no_relative_link(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as archive:
        meta = metadata(
            archive.read(f"magnet_exporter-{package_version()}.dist-info/METADATA").decode()
        )
    description = meta.get_payload()
    assert isinstance(description, str)
    links = [
        link for pattern in LINK_PATTERNS for link in re.findall(pattern, description, re.MULTILINE)
    ]
    assert links, "no link found: the patterns no longer match the long description"
    relative = [link for link in links if not re.match(r"https?://", link)]
    assert not relative, f"links that lead nowhere from the index page: {relative}"

    # The README's relative links point at this version's tag, at files and headings that exist.
    at_tag = f"{REPOSITORY}/blob/v{package_version()}/"
    rewritten = [link for link in links if link.startswith(REPOSITORY)]
    assert rewritten, "the README's relative links are not rewritten to the repository"
    for link in rewritten:
        assert link.startswith(at_tag), f"{link} does not point at the tag v{package_version()}"
        path, _, anchor = link.removeprefix(at_tag).partition("#")
        target = REPO_ROOT / path
        assert target.is_file(), f"{link}: no file {path} in the repository"
        if anchor:
            assert anchor in github_anchors(target.read_text()), f"{link}: no heading #{anchor}"
    # Apart from those links it is the README, which keeps its relative links.
    unrewritten = description.replace(at_tag, "").replace("](README.md#", "](#")
    assert unrewritten.strip() == README.read_text().strip()
