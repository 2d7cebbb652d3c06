"""CI detection: under CI a missing test input fails the run instead of skipping it quietly."""

import pytest

from tests.common import in_ci, official_file


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", "yes", "Yes", "on", "ON", " true\n"])
def test_truthy_values_mean_ci(value):
    assert in_ci({"CI": value}) is True


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", "off", "2", "y", "truthy", "enabled"])
def test_other_values_do_not(value):
    assert in_ci({"CI": value}) is False


def test_unset_is_not_ci_and_the_process_environment_is_the_default(monkeypatch):
    assert in_ci({}) is False
    monkeypatch.setenv("CI", "yes")
    assert in_ci() is True
    monkeypatch.delenv("CI")
    assert in_ci() is False


def test_missing_official_file_fails_under_ci_with_one_line(monkeypatch):
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        official_file("no-such-dataset", "nothing.txt")
    message = str(failed.value)
    assert "\n" not in message and "nothing.txt is missing" in message and "CI must not skip" in message
    assert failed.value.pytrace is False


def test_missing_official_file_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "off")
    with pytest.raises(pytest.skip.Exception, match="nothing.txt is missing"):
        official_file("no-such-dataset", "nothing.txt")
