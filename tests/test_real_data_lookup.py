"""Where the real-data tests look for the data set, and what they say when it is not there."""

import pytest

import helpers


def test_the_environment_variable_wins(tmp_path, monkeypatch):
    (tmp_path / "tire").mkdir()
    monkeypatch.setenv(helpers.REAL_DATA_ENV, str(tmp_path))
    assert helpers.find_real_data("tire") == tmp_path


def test_a_variable_naming_a_folder_without_the_data_fails(tmp_path, monkeypatch):
    monkeypatch.setenv(helpers.REAL_DATA_ENV, str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"TORCH_ARCAD_DATA=.* does not hold the categories \['tire'\]"):
        helpers.find_real_data("tire")


def test_without_the_data_the_skip_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv(helpers.REAL_DATA_ENV, raising=False)
    monkeypatch.setattr(helpers, "REAL_DATA_BESIDE_REPO", tmp_path / "shared" / "data")
    with pytest.raises(pytest.skip.Exception) as skipped:
        helpers.find_real_data("magnetic_tile", "tire")
    message = str(skipped.value)
    assert "TORCH_ARCAD_DATA is not set" in message and str(tmp_path / "shared" / "data") in message
