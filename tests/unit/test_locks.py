"""The lock files (requirements/*.lock, written by scripts/lock) and what installs from them.

``requirements/test.lock`` is what scripts/bootstrap installs for the tests (core + local + test),
``requirements/image.lock`` what docker/Dockerfile installs (the core only, at the tested versions),
each by the pip ``requirements/pip.lock`` pins.
There is no Docker here, so the image is checked statically: its Python minor is the one the tests
run on, and it installs nothing that a lock does not pin with hashes. The checker is itself checked
on broken locks below: a check that cannot fail checks nothing.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
IMAGE_LOCK = ROOT / "requirements" / "image.lock"
TEST_LOCK = ROOT / "requirements" / "test.lock"
PIP_LOCK = ROOT / "requirements" / "pip.lock"
IMAGE_LOCKS = ("requirements/pip.lock", "requirements/image.lock")  # as the Dockerfile names them
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])

# The tritonclient extras whose modules the code imports (the base package has tritonclient.utils).
TRITONCLIENT_EXTRAS = {"http", "grpc"}


# --- the checker ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pin:
    name: str  # canonical: lower case, runs of -_. as one -
    extras: frozenset[str]
    version: str
    hashes: tuple[str, ...]


_PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[(?P<extras>[^\]]*)\])?==(?P<version>\S+)(?P<rest>.*)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def logical_lines(text: str) -> list[str]:
    """Requirement lines as pip reads them: comments dropped, backslash continuations joined."""
    lines, pending = [], ""
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if (pending + line).strip():
            lines.append(" ".join((pending + line).split()))
        pending = ""
    if pending.strip():
        lines.append(" ".join(pending.split()))
    return lines


def parse_lock(text: str) -> tuple[dict[str, Pin], list[str]]:
    """Every pin of a lock, and what is wrong with it: each line ``name[extras]==version`` with at
    least one ``--hash=sha256:`` and nothing else (no option lines, no ranges, no URLs)."""
    pins: dict[str, Pin] = {}
    problems: list[str] = []
    for line in logical_lines(text):
        match = _PIN.fullmatch(line)
        if match is None:
            problems.append(f"not pinned with ==: {line[:80]}")
            continue
        hashes = tuple(_HASH.findall(match["rest"]))
        name = canonicalize_name(match["name"])
        leftover = _HASH.sub("", match["rest"]).strip()
        if not hashes:
            problems.append(f"{name}=={match['version']}: no --hash=sha256")
        elif leftover:
            problems.append(f"{name}=={match['version']}: unexpected {leftover[:60]!r}")
        if name in pins:
            problems.append(f"{name}: pinned twice")
        extras = frozenset(e.strip() for e in (match["extras"] or "").split(",") if e.strip())
        pins[name] = Pin(name, extras, match["version"], hashes)
    return pins, problems


def declared(*extras: str) -> list[Requirement]:
    """pyproject's requirements: the core, the named extras (a self-reference expanded), the build's."""
    requirements = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    requirements += [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]  # --no-build-isolation
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in PYPROJECT["project"]["optional-dependencies"][extra]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == PROJECT:
                todo += sorted(requirement.extras)
            else:
                requirements.append(requirement)
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


def missing_from(pins: dict[str, Pin], requirements: list[Requirement]) -> list[str]:
    """Each declared requirement the lock does not satisfy: absent, another version, fewer extras."""
    problems = []
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement}: the lock pins {pin.version}")
        elif not requirement.extras <= pin.extras:
            problems.append(f"{requirement}: the lock has extras {sorted(pin.extras)}")
    return problems


def version_mismatches(image: dict[str, Pin], tested: dict[str, Pin]) -> list[str]:
    """Packages of the image at a version the tests did not run (or not in the tests at all)."""
    return [f"{name}: image {pin.version}, tests {tested[name].version if name in tested else 'none'}"
            for name, pin in sorted(image.items()) if name not in tested or tested[name].version != pin.version]


def tritonclient_problems(pins: dict[str, Pin]) -> list[str]:
    pin = pins.get("tritonclient")
    if pin is None:
        return ["tritonclient: not in the lock"]
    if pin.extras != TRITONCLIENT_EXTRAS:
        return [f"tritonclient extras {sorted(pin.extras)}, the code needs {sorted(TRITONCLIENT_EXTRAS)}"]
    return []


def check_lock(text: str, requirements: list[Requirement]) -> list[str]:
    pins, problems = parse_lock(text)
    return problems + missing_from(pins, requirements) + tritonclient_problems(pins)


def lock_python(text: str) -> tuple[int, int]:
    found = re.search(r"^# This file is autogenerated by pip-compile with Python (\d+)\.(\d+)$", text, re.M)
    assert found, "no pip-compile header"
    return int(found[1]), int(found[2])


def dockerfile_python(text: str) -> tuple[int, int]:
    found = re.search(r"^FROM\s+python:(\d+)\.(\d+)(?:\.\d+)?(?:[-\s@]|$)", text, re.M)
    assert found, "the image is not FROM an official python:X.Y image"
    return int(found[1]), int(found[2])


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The words of each `pip install` a RUN runs (continuations joined, `&&` chains split)."""
    commands = re.findall(r"^RUN\s+(.*)$", dockerfile.replace("\\\n", " "), re.M)
    return [part.split() for command in commands for part in re.split(r"&&|;|\|\|", command)
            if re.search(r"\bpip\s+install\b", part)]


def dockerfile_problems(text: str) -> list[str]:
    """The image installs pip's lock and its own with hashes; any other pip install is the project alone
    (--no-deps) built with the lock's setuptools (--no-build-isolation: an isolated build would fetch
    an unpinned one)."""
    installs = pip_installs(text)
    hashed = [words for words in installs if "--require-hashes" in words and "-r" in words]
    locks = {words[words.index("-r") + 1] for words in hashed}
    problems = [f"no `pip install --require-hashes -r {lock}`" for lock in IMAGE_LOCKS if lock not in locks]
    for words in (w for w in installs if w not in hashed):
        if "--no-deps" not in words:
            problems.append(f"unlocked: {' '.join(words)}")
        elif "--no-build-isolation" not in words:
            problems.append(f"an unpinned build backend: {' '.join(words)}")
    copied = [src for line in re.findall(r"^COPY\s+(.+)$", text, re.M) for src in line.split()[:-1]]
    problems += [f"{lock} is not copied into the image" for lock in IMAGE_LOCKS if lock not in copied]
    return problems


# --- the real files ---------------------------------------------------------------------------------

def test_the_image_runs_the_python_minor_the_tests_run_on() -> None:
    image = dockerfile_python(DOCKERFILE.read_text())
    assert image == sys.version_info[:2], f"the image has Python {image}, the tests {sys.version_info[:2]}"
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(f"{image[0]}.{image[1]}")
    for lock in (IMAGE_LOCK, TEST_LOCK, PIP_LOCK):  # markers were evaluated for this Python
        assert lock_python(lock.read_text()) == image, lock.name


def test_the_image_installs_only_from_the_hashed_lock() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(("lock", "extras"), [(IMAGE_LOCK, ()), (TEST_LOCK, ("local", "test"))],
                         ids=["image", "test"])
def test_each_lock_pins_with_hashes_everything_pyproject_declares(lock: Path, extras: tuple[str, ...]) -> None:
    assert check_lock(lock.read_text(), declared(*extras)) == []


def test_the_installer_is_pinned_with_hashes_too() -> None:
    pins, problems = parse_lock(PIP_LOCK.read_text())
    assert problems == [] and set(pins) == {"pip"}


def test_the_image_has_the_versions_the_tests_ran() -> None:
    image, _ = parse_lock(IMAGE_LOCK.read_text())
    tested, _ = parse_lock(TEST_LOCK.read_text())
    assert image["numpy"].version == tested["numpy"].version
    assert version_mismatches(image, tested) == []


def test_the_image_has_neither_the_test_tools_nor_what_tritonclient_all_brings() -> None:
    image, _ = parse_lock(IMAGE_LOCK.read_text())
    assert not {"pytest", "ruff", "nvidia-pytriton", "onnxruntime", "perf-analyzer", "cuda-python"} & set(image)


def test_tritonclient_extras_are_the_ones_the_code_imports() -> None:
    used: set[str] = set()
    for path in (ROOT / "orchestrator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            used |= {n.split(".")[1] for n in names if n.startswith("tritonclient.")}
    assert used - {"utils"} == TRITONCLIENT_EXTRAS  # utils ships in the base package
    (line,) = [r for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "tritonclient"]
    assert Requirement(line).extras == TRITONCLIENT_EXTRAS


# --- the checker fails on broken locks ---------------------------------------------------------------

def without_entry(text: str, name: str) -> str:
    """The lock with one package's block (its pin, hashes and `# via` lines) cut out."""
    cut = re.sub(rf"^{re.escape(name)}(\[[^\]]*\])?==.*?(?=^\S|\Z)", "", text, count=1, flags=re.M | re.S)
    assert cut != text, f"no {name} in the lock"
    return cut


@pytest.fixture(scope="module")
def image_lock() -> str:
    return IMAGE_LOCK.read_text()


@pytest.mark.parametrize(("damage", "words"), [
    pytest.param(lambda t: without_entry(t, "numpy") + "numpy==1.26.4\n", "numpy==1.26.4: no --hash", id="no-hash"),
    pytest.param(lambda t: without_entry(t, "pyyaml"), "pyyaml>=6: not in the lock", id="missing-package"),
    pytest.param(lambda t: without_entry(t, "setuptools"), "setuptools>=68: not in the lock", id="no-build-backend"),
    pytest.param(lambda t: without_entry(t, "requests") + "requests>=2.28 --hash=sha256:" + "0" * 64 + "\n",
                 "not pinned with ==: requests>=2.28", id="range-not-pin"),
    pytest.param(lambda t: re.sub(r"^numpy==\S+", "numpy==1.23.5", t, flags=re.M), "numpy>=1.24: the lock pins 1.23.5",
                 id="outside-declared-range"),
    pytest.param(lambda t: t.replace("tritonclient[grpc,http]==", "tritonclient[all]=="), "tritonclient extras ['all']",
                 id="tritonclient-all"),
    pytest.param(lambda t: t.replace("tritonclient[grpc,http]==", "tritonclient[http]=="),
                 "the lock has extras ['http']", id="tritonclient-without-grpc"),
    pytest.param(lambda t: "--extra-index-url https://example.invalid/simple\n" + t,
                 "not pinned with ==: --extra-index", id="option-line"),
    pytest.param(lambda t: t + "click==8.1.0 \\\n    --hash=sha256:" + "1" * 64 + "\n", "click: pinned twice",
                 id="pinned-twice"),
])
def test_the_checker_refuses_a_broken_lock(image_lock: str, damage, words: str) -> None:
    assert check_lock(image_lock, declared()) == []  # the real lock passes ...
    problems = check_lock(damage(image_lock), declared())
    assert any(words in problem for problem in problems), problems  # ... and the broken one, for that reason


def test_the_image_versions_check_catches_a_numpy_the_tests_did_not_run(image_lock: str) -> None:
    tested, _ = parse_lock(TEST_LOCK.read_text())
    image, _ = parse_lock(re.sub(r"^numpy==\S+", "numpy==2.0.2", image_lock, flags=re.M))
    assert version_mismatches(image, tested) == [f"numpy: image 2.0.2, tests {tested['numpy'].version}"]


@pytest.mark.parametrize(("dockerfile", "words"), [
    pytest.param("FROM python:3.11-slim\nCOPY pyproject.toml ./\nRUN pip install .\n", "no `pip install --require",
                 id="no-lock"),
    pytest.param("FROM python:3.11-slim\nCOPY requirements/image.lock ./requirements/\n"
                 "RUN pip install --require-hashes -r requirements/image.lock && pip install .\n",
                 "unlocked: pip install .", id="project-with-its-deps"),
    pytest.param("FROM python:3.11-slim\nCOPY requirements/image.lock ./requirements/\n"
                 "RUN pip install --require-hashes -r requirements/image.lock && pip install --no-deps .\n",
                 "an unpinned build backend", id="isolated-build"),
    pytest.param("FROM python:3.11-slim\nRUN pip install --require-hashes \\\n    -r requirements/image.lock\n",
                 "requirements/image.lock is not copied", id="lock-not-copied"),
    pytest.param("FROM python:3.11-slim\nCOPY requirements/image.lock ./requirements/\n"
                 "RUN pip install --require-hashes -r requirements/image.lock\n",
                 "no `pip install --require-hashes -r requirements/pip.lock`", id="unpinned-pip"),
])
def test_the_dockerfile_check_refuses_an_unlocked_install(dockerfile: str, words: str) -> None:
    assert any(words in problem for problem in dockerfile_problems(dockerfile)), dockerfile_problems(dockerfile)


def test_the_python_check_reads_the_tags_images_use() -> None:
    assert dockerfile_python("FROM python:3.12-slim\n") == (3, 12)
    assert dockerfile_python("FROM python:3.11-slim-bookworm AS build\n") == (3, 11)
    assert dockerfile_python("FROM python:3.10.14-slim\n") == (3, 10)
