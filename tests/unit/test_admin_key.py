"""The admin key file: read only when no "other" user can open it, and only when it is a small regular file.

Real files, FIFOs and devices on this machine; the CLI is driven through click, as a user runs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.errors import UsageError
from orchestrator.settings import ENV_ADMIN_KEY, ENV_ADMIN_KEY_FILE, KEY_FILE_MAX_BYTES, read_admin_key

KEY = "s3cret-admin-key"


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(ENV_ADMIN_KEY, raising=False)
    monkeypatch.delenv(ENV_ADMIN_KEY_FILE, raising=False)
    return monkeypatch


def key_file(tmp_path: Path, mode: int, content: str | bytes = KEY + "\n", name: str = "admin.key") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


def read(key_env: pytest.MonkeyPatch, path: Path) -> str | None:
    key_env.setenv(ENV_ADMIN_KEY_FILE, str(path))
    return read_admin_key()


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o660, 0o440])
def test_a_file_only_its_owner_and_group_can_open_gives_the_key(key_env: pytest.MonkeyPatch, tmp_path: Path,
                                                                mode: int) -> None:
    assert read(key_env, key_file(tmp_path, mode)) == KEY  # group access is allowed: a shared service group


@pytest.mark.parametrize("mode", [0o604, 0o644, 0o602, 0o601, 0o666, 0o777])
def test_a_file_open_to_other_users_is_refused_naming_its_mode(key_env: pytest.MonkeyPatch, tmp_path: Path,
                                                               mode: int) -> None:
    path = key_file(tmp_path, mode)
    with pytest.raises(UsageError) as caught:
        read(key_env, path)
    message = str(caught.value)
    assert str(path) in message and f"{mode:04o}" in message and f"chmod 600 {path}" in message
    assert KEY not in message and "\n" not in message


def test_a_link_to_a_private_file_is_followed(key_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Kubernetes mounts a secret as a symlink into a hidden folder; the mode that counts is the file's.
    target = key_file(tmp_path, 0o600)
    (tmp_path / "link").symlink_to(target)
    assert read(key_env, tmp_path / "link") == KEY


def test_a_missing_file_is_refused_naming_it(key_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "admin.key"
    with pytest.raises(UsageError, match=f"cannot read the admin key file {path}: No such file or directory"):
        read(key_env, path)


def test_a_directory_is_refused(key_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o700)
    with pytest.raises(UsageError, match=f"{folder} is not a regular file"):
        read(key_env, folder)


def test_a_fifo_is_refused_without_waiting_for_a_writer(key_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fifo = tmp_path / "admin.key"
    os.mkfifo(fifo, 0o600)  # opening it for reading would block until someone writes
    with pytest.raises(UsageError, match="is not a regular file"):
        read(key_env, fifo)


def test_an_endless_device_is_refused_without_reading_it(key_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="/dev/zero is not a regular file"):
        read(key_env, Path("/dev/zero"))


@pytest.mark.parametrize(("content", "words"), [
    ("", "is empty"),
    ("\n", "is empty"),
    ("first-key\nsecond-key\n", "one line of printable ASCII"),
    ("two words\n", "one line of printable ASCII"),
    ("\tkey\n", "one line of printable ASCII"),
    ("kéy\n".encode(), "not ASCII"),
    (b"key\x00\n", "one line of printable ASCII"),
    ("k" * (KEY_FILE_MAX_BYTES + 1), f"larger than {KEY_FILE_MAX_BYTES} bytes"),
])
def test_a_file_that_holds_no_usable_key_is_refused(key_env: pytest.MonkeyPatch, tmp_path: Path,
                                                    content: str | bytes, words: str) -> None:
    path = key_file(tmp_path, 0o600, content)
    with pytest.raises(UsageError, match=words) as caught:
        read(key_env, path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("ending", ["", "\n", "\r\n", "\n\n"])
def test_the_line_end_is_not_part_of_the_key(key_env: pytest.MonkeyPatch, tmp_path: Path, ending: str) -> None:
    assert read(key_env, key_file(tmp_path, 0o600, KEY + ending)) == KEY


def test_the_variable_wins_over_the_file_and_is_checked_the_same_way(key_env: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    key_env.setenv(ENV_ADMIN_KEY_FILE, str(key_file(tmp_path, 0o644)))  # never read: the variable is set
    key_env.setenv(ENV_ADMIN_KEY, "from-the-environment")
    assert read_admin_key() == "from-the-environment"
    key_env.setenv(ENV_ADMIN_KEY, "two words")
    with pytest.raises(UsageError, match=f"{ENV_ADMIN_KEY} has spaces"):
        read_admin_key()


def test_no_key_anywhere_is_no_key(key_env: pytest.MonkeyPatch) -> None:
    assert read_admin_key() is None


def test_the_cli_refuses_a_world_readable_key_file_in_one_line(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    repository.mkdir()
    path = key_file(tmp_path, 0o644)
    result = CliRunner().invoke(app, ["--repository", str(repository), "status"],
                                env={ENV_ADMIN_KEY: None, ENV_ADMIN_KEY_FILE: str(path)})
    assert result.exit_code == UsageError.exit_code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "0644" in lines[0] and str(path) in lines[0]
    assert result.stdout == "" and "Traceback" not in result.output and KEY not in result.output
