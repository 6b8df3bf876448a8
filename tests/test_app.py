"""One AppTest per page, on a small checkpoint and synthetic data made here."""

import pytest
from streamlit.testing.v1 import AppTest

from lowrank_core import configs, data as data_lib, train


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    from conftest import write_archive, write_folder

    root = tmp_path_factory.mktemp("app")
    archive = write_archive(root / data_lib.ARCHIVE_NAME, write_folder(root / "src", n_per_batch=40))
    train.train_and_save(configs.get_preset("tiny"), data_lib.load_cifar10(archive), root / "ck")
    return archive, root / "ck"


@pytest.fixture
def env(app_env, monkeypatch):
    archive, ck = app_env
    monkeypatch.setenv(data_lib.ENV_VAR, str(archive))
    monkeypatch.setenv("LOWRANK_CHECKPOINT", str(ck))
    return app_env


def test_model_card_page(env):
    at = AppTest.from_file("../app.py", default_timeout=300).run()
    assert not at.exception and not at.error
    labels = [m.label for m in at.metric]
    assert "Test accuracy" in labels and "Parameters" in labels
    assert [m.value for m in at.metric if m.label == "Parameters"] == ["21,257,026"]


def test_low_rank_page_slider_changes_metrics(env):
    at = AppTest.from_file("../pages/low_rank.py", default_timeout=300).run()
    assert not at.exception and not at.error
    at.radio(key="svd_form").set_value("factorized").run()
    before = {m.label: m.value for m in at.metric}
    ranks_before = at.caption[0].value
    at.slider(key="svd_fraction").set_value(0.05).run()
    after = {m.label: m.value for m in at.metric}
    assert not at.exception
    assert before["Parameters"] != after["Parameters"]
    assert before["MACs / image"] != after["MACs / image"]
    assert "linear 1500" in ranks_before and "linear 150," in at.caption[0].value


def test_bad_data_path_is_an_error_not_a_traceback(env, monkeypatch):
    monkeypatch.setenv(data_lib.ENV_VAR, "/nonexistent/cifar.tar.gz")
    at = AppTest.from_file("../app.py", default_timeout=120).run()
    assert not at.exception
    assert at.error and "does not exist" in at.error[0].value


def test_spectra_page_draws_charts_and_moves_truncation(env):
    at = AppTest.from_file("../pages/spectra.py", default_timeout=300).run()
    assert not at.exception and not at.error
    charts = at.get("plotly_chart")
    assert len(charts) == 5
    table_before = at.dataframe[0].value
    assert list(table_before["layer"]) == ["linear", "linear_1", "linear_2", "linear_3", "linear_4"]
    at.slider(key="spectra_fraction").set_value(0.1).run()
    assert not at.exception and len(at.get("plotly_chart")) == 5
    assert "k = 300" in at.get("plotly_chart")[0].proto.spec
