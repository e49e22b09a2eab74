import pytest

from orchestrator.core.versions import is_version_folder, parse_version
from orchestrator.errors import UsageError
from orchestrator.settings import Settings


@pytest.mark.parametrize(("text", "version"), [("v4", 4), ("4", 4), ("V12", 12), (" 7 ", 7)])
def test_versions_as_users_type_them(text, version):
    assert parse_version(text) == version


@pytest.mark.parametrize("text", ["v0", "0", "-1", "v", "four", "4.1", "04"])
def test_bad_versions_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_version(text)


def test_triton_version_folders():
    assert is_version_folder("3") and not is_version_folder("03") and not is_version_folder(".staging-3")


def test_settings_never_print_the_admin_key(tmp_path):
    settings = Settings(tmp_path, admin_key="s3cret")
    assert "s3cret" not in repr(settings)
    with pytest.raises(UsageError, match="not a folder"):
        Settings(tmp_path / "missing")
