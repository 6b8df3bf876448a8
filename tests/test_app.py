"""One AppTest per page, on a small checkpoint and synthetic data made here."""

import json
import math
import pathlib
import threading

import pytest
from streamlit.testing.v1 import AppTest

from lowrank_core import data as data_lib, model
from lowrank_core.finetune import FinetuneConfig


@pytest.fixture
def env(tiny_checkpoint, monkeypatch):
    archive, ck = tiny_checkpoint
    monkeypatch.setenv(data_lib.ENV_VAR, str(archive))
    monkeypatch.setenv("LOWRANK_CHECKPOINT", str(ck))
    # Each test has its own artifacts folder (conftest): start from empty Streamlit caches too.
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    return tiny_checkpoint


def background_timing_done(timeout_s: float = 120) -> None:
    """Waits for the latencies the pages asked to be timed in the background (:func:`curves.time_later`)."""
    for thread in threading.enumerate():
        if thread.name == "lowrank-timing":
            thread.join(timeout_s)
            assert not thread.is_alive()


def test_overview_page(env):
    at = AppTest.from_file("../app.py", default_timeout=300).run()
    assert not at.exception and not at.error
    labels = [m.label for m in at.metric]
    assert "Test accuracy" in labels and "Parameters" in labels
    spec = model.TINY_SPEC
    expected_params = sum(math.prod(s) for shapes in spec.shapes().values() for s in shapes.values())
    assert [m.value for m in at.metric if m.label == "Parameters"] == [f"{expected_params:,}"]
    # The test set has 40 images: latency is labelled with the batch actually timed.
    # Timed in the background, never inside the page's run (it would hold other sessions up).
    assert [m.value for m in at.metric if m.label == "Latency, batch 40"] == ["timing…"]
    background_timing_done()
    at.run()
    latency = [m.value for m in at.metric if m.label == "Latency, batch 40"]
    assert latency and latency[0].endswith(" ms")
    stored = [m.value for m in at.metric if m.label == "Stored size"][0]
    _, ck = env
    from pages.common import fmt_mib

    assert stored == fmt_mib((ck / "params.npz").stat().st_size)
    assert "stored size" in at.get("plotly_chart")[0].proto.spec
    at.radio(key="overview_axis").set_value("latency (ms per batch of 40)").run()
    assert not at.exception and "latency" in at.get("plotly_chart")[0].proto.spec
    axis = "latency, ONNX Runtime (ms per batch of 40)"
    assert axis in at.radio(key="overview_axis").options  # either runtime's latency on the cost axis
    at.radio(key="overview_axis").set_value(axis).run()
    assert not at.exception and "ONNX Runtime" in at.get("plotly_chart")[0].proto.spec


def ranks_caption(at) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Ranks:"))


def test_low_rank_page_slider_changes_metrics(env):
    at = AppTest.from_file("../pages/low_rank.py", default_timeout=300).run()
    assert not at.exception and not at.error
    assert at.radio(key="svd_form").value == "factorized" and at.slider(key="svd_fraction").value == 0.05
    ranks_default = ranks_caption(at)
    at.slider(key="svd_fraction").set_value(0.5).run()
    before = {m.label: m.value for m in at.metric}
    ranks_before = ranks_caption(at)
    at.slider(key="svd_fraction").set_value(0.05).run()
    after = {m.label: m.value for m in at.metric}
    assert not at.exception
    assert before["Parameters"] != after["Parameters"]
    assert before["MACs / image"] != after["MACs / image"]
    assert "linear 48" in ranks_before and "linear 4," in ranks_caption(at)
    assert ranks_caption(at) == ranks_default
    at.radio(key="svd_mode").set_value("energy threshold").run()
    assert not at.exception and not at.error and "Ranks:" in ranks_caption(at)
    at.number_input(key="svd_override_linear_4").set_value(0.5).run()
    assert not at.exception and "linear_4 5" in ranks_caption(at)
    at.toggle(key="svd_compare_basis").set_value(True).run()
    assert not at.exception and not at.error
    assert any("Same rule in the activations basis" in c.value for c in at.caption)
    at.radio(key="svd_basis").set_value("activations").run()
    assert not at.exception and not at.error
    assert any("Same rule in the weights basis" in c.value for c in at.caption)


def test_pruning_page_slider_changes_metrics(env):
    at = AppTest.from_file("../pages/pruning.py", default_timeout=300).run()
    assert not at.exception and not at.error
    # By default the dense kernels only: the convolutions' bars stay at zero until switched on.
    bars = lambda: json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]  # noqa: E731
    zero_share = dict(zip(bars()["x"], bars()["y"]))
    assert zero_share["conv2_d"] == 0 and zero_share["linear"] > 0
    at.toggle(key="prune_convolutions").set_value(True).run()
    assert not at.exception and dict(zip(bars()["x"], bars()["y"]))["conv2_d"] > 0
    at.radio(key="prune_kind").set_value("structured (drop hidden units)").run()
    before = {m.label: m.value for m in at.metric}
    at.slider(key="prune_sparsity").set_value(0.9).run()
    after = {m.label: m.value for m in at.metric}
    assert not at.exception and not at.error
    assert before["Parameters"] != after["Parameters"] and before["MACs / image"] != after["MACs / image"]
    assert len(at.get("plotly_chart")) == 1


def test_layer_removal_page_retrains_and_shows_result(env):
    at = AppTest.from_file("../pages/layer_removal.py", default_timeout=300).run()
    assert not at.exception and not at.error
    at.slider(key="remove_steps").set_value(50).run()
    at.toggle(key="remove_latency").set_value(False).run()
    assert not at.metric  # nothing measured until the button is pressed
    at.button(key="remove_run").click().run()
    assert not at.exception and not at.error
    params = {m.label: m.value for m in at.metric}["Parameters"]
    full = sum(math.prod(s) for shapes in model.TINY_SPEC.shapes().values() for s in shapes.values())
    assert params == f"{full - (96 * 64 + 64) - 64 * 64 + 96 * 64:,}"  # linear_2 now reads linear's 96 units
    at.multiselect(key="remove_layers").set_value(["linear_1", "linear_2"]).run()
    assert not at.exception and not at.metric  # a new selection is not measured yet


def test_compare_page_lists_and_exports(env):
    from lowrank_core import engine as engine_lib
    from lowrank_core.methods.prune import PruneConfig
    from lowrank_core.methods.svd import SvdConfig

    archive, ck = env
    eng = engine_lib.Engine(ck, data_lib.load_cifar10(archive))
    eng.evaluate("baseline", with_latency=False)
    eng.evaluate("svd", SvdConfig(0.1, "factorized"), with_latency=False)
    eng.evaluate("quantize", with_latency=False)
    # Alike-described variants must both be listed (labels were once dict keys that collided).
    eng.evaluate("prune", PruneConfig(0.5, structured=True), with_latency=False)
    eng.evaluate("prune", PruneConfig(0.5, structured=True), finetune=FinetuneConfig(steps=5), with_latency=False)
    at = AppTest.from_file("../pages/compare.py", default_timeout=300).run()
    assert not at.exception and not at.error
    options = at.multiselect(key="compare_pick").options
    assert len(options) == 5 and len(set(options)) == 5
    at.multiselect(key="compare_pick").set_value(
        [o for o in at.multiselect(key="compare_pick").options if o.startswith("SVD")]
    ).run()
    assert not at.exception and len(at.dataframe[0].value) == 1
    at.selectbox(key="export_variant").set_value(
        [o for o in at.selectbox(key="export_variant").options if o.startswith("SVD")][0]
    ).run()
    at.button(key="export_npz_prepare").click().run()
    assert not at.exception and not at.error
    at.button(key="export_onnx_prepare").click().run()
    assert not at.exception and not at.error
    at.button(key="export_report_prepare").click().run()
    assert not at.exception and not at.error
    assert "Plotly.newPlot" in at.session_state["export_report_html"]
    blob = at.session_state["export_npz_blob"][1]
    measured = [r for r in eng.cached_results() if r["method"] == "svd"][0]
    assert len(blob) == measured["bytes"]  # the download is the variant whose size was shown
    onnx_blob = at.session_state["export_onnx_blob"][1]
    assert onnx_blob == eng.variant_onnx(measured)  # the ONNX model of that same variant


def test_train_data_page_trains_with_progress(env, tmp_path):
    at = AppTest.from_file("../pages/train_data.py", default_timeout=300).run()
    assert not at.exception and not at.error
    at.selectbox(key="train_preset").set_value("tiny").run()
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error
    assert at.success and "Test accuracy" in at.success[0].value
    at.button(key="train_use").click().run()
    assert not at.exception and at.session_state["checkpoint_choice"] == "trained here: tiny"
    from lowrank_core import checkpoint

    # The picker (the sidebar, on every page of app.py) offers that checkpoint under this label.
    assert checkpoint.known_checkpoints()["trained here: tiny"] == checkpoint.trained_dir("tiny")


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
    assert "k = 9" in at.get("plotly_chart")[0].proto.spec


def test_storage_page_reaches_int8_and_dead_units(env):
    at = AppTest.from_file("../pages/storage.py", default_timeout=300).run()
    assert not at.exception and not at.error
    int8 = {m.label: m.value for m in at.metric}
    assert "int8" in at.caption[0].value
    at.radio(key="storage_start").set_value("dead units dropped (lossless)").run()
    assert not at.exception and "dead units dropped → int8" in at.caption[0].value
    at.toggle(key="storage_int8").set_value(False).run()
    lossless = {m.label: m.value for m in at.metric}
    assert not at.exception and lossless["Stored size"] != int8["Stored size"]
    assert lossless["Test accuracy"].endswith("%")
    at.radio(key="storage_start").set_value("SVD factorized, hidden layers at fraction f").run()
    at.toggle(key="storage_int8").set_value(True).run()
    assert not at.exception and "SVD factorized f=0.05, output kept → int8" in at.caption[0].value
    background_timing_done()  # latency is on by default, timed in the background in every runtime
    at.run()
    assert any(m.label.startswith("Latency · ") for m in at.metric)
    assert any(c.value.startswith("**ONNX Runtime**") and "integer" in c.value for c in at.caption)


def test_sensitivity_page_draws_the_heatmap_and_checks_additivity(env):
    at = AppTest.from_file("../pages/sensitivity.py", default_timeout=300).run()
    assert not at.exception and not at.error and not at.get("plotly_chart")  # nothing measured yet
    at.button(key="sensitivity_run").click().run()
    assert not at.exception and not at.error
    heatmap = at.get("plotly_chart")[0].proto.spec
    # The hidden layers on their own colour scale and a log rank-fraction axis; the output layer one toggle away.
    assert '"type":"heatmap"' in heatmap.replace(" ", "") and "linear_3" in heatmap and "linear_4" not in heatmap
    assert '"type":"log"' in heatmap.replace(" ", "")
    at.toggle(key="sensitivity_show_output").set_value(True).run()
    assert not at.exception and "linear_4" in at.get("plotly_chart")[0].proto.spec
    at.button(key="sensitivity_additivity").click().run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert len(table) == 4 and "measured drop, all together (points)" in table.columns


def test_advisor_page_answers_with_measured_candidates(env):
    at = AppTest.from_file("../pages/advisor.py", default_timeout=300).run()
    assert not at.exception and not at.error
    at.number_input(key="advisor_drop").set_value(5.0).run()
    at.button(key="advisor_run").click().run()
    assert not at.exception and not at.error
    assert at.success and "accuracy" in at.success[0].value  # within 5 points a candidate is found
    candidates = at.dataframe[0].value
    assert len(candidates) >= 1 and "drop_points" in candidates.columns
    at.radio(key="advisor_question").set_value("most accurate within a budget").run()
    at.button(key="advisor_run").click().run()
    assert not at.exception and not at.error and at.dataframe


def test_changes_page_shows_classes_confusion_and_gallery(env):
    import numpy as np

    from lowrank_core import engine as engine_lib
    from lowrank_core.methods.svd import SvdConfig

    archive, ck = env
    eng = engine_lib.Engine(ck, data_lib.load_cifar10(archive))
    base = eng.evaluate("baseline", with_latency=False)
    variant = eng.evaluate("svd", SvdConfig(0.02, "factorized"), with_latency=False)
    at = AppTest.from_file("../pages/changes.py", default_timeout=300).run()
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 4
    # Counts recomputed independently from the two prediction vectors.
    y = eng.data.y_test
    reference, predicted = eng.predictions(base), eng.predictions(variant)
    assert np.mean(predicted == y) == variant["accuracy"] and np.mean(reference == y) == base["accuracy"]
    fixed, broken = int(np.sum((reference != y) & (predicted == y))), int(np.sum((reference == y) & (predicted != y)))
    caption = at.caption[0].value
    assert f"{fixed:,} images fixed" in caption and f"{broken:,} broken" in caption
    assert len(at.get("image")) == min(24, fixed) + min(24, broken)


def test_spectra_page_overlays_another_checkpoint(env):
    import os
    import shutil

    from lowrank_core import paths

    _, ck = env
    other = pathlib.Path(os.environ["LOWRANK_ARTIFACTS"]) / "checkpoints" / "retrained"
    shutil.copytree(ck, other)  # as the Train page would leave one
    at = AppTest.from_file("../pages/spectra.py", default_timeout=300).run()
    at.selectbox(key="spectra_other").set_value(str(other)).run()
    assert not at.exception and not at.error
    spec = at.get("plotly_chart")[0].proto.spec
    assert "other checkpoint" in spec and '"exponentformat":"e"' in spec.replace(" ", "")
    at.checkbox(key="spectra_data").check().run()
    assert not at.exception and not at.error
    import json

    names = [trace.get("name") for trace in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]]
    assert "σ(LᵀW), as data sees it" in names
    at.selectbox(key="spectra_other").set_value(str(paths.BASELINE_DIR)).run()  # the seed network: other shapes
    assert not at.exception and at.error and "other layer shapes" in at.error[0].value


HOSTILE_TEXT = [
    "",
    " ",
    "../../../../etc/passwd",
    "/dev/null",
    "/proc/self/mem",
    "~nobody/x",
    "\x00bad",
    "a" * 5000,
    "C:\\\\cifar",
    "💥/ü",
    "/tmp",
    "file:///etc",
    "$(rm -rf /)",
    "\n",
]


@pytest.mark.parametrize("key", ["data_path", "checkpoint_path"])
def test_hostile_sidebar_paths_are_one_clear_error(env, key):
    for text in HOSTILE_TEXT:
        at = AppTest.from_file("../app.py", default_timeout=300)
        at.session_state[key] = text
        at.run()
        assert not at.exception, (key, text)
        if text.strip():
            errors = [e.value for e in at.error]
            if key == "data_path":
                # Either it is not a CIFAR-10 source (one error saying what to set) or, for a blank, the default.
                assert len(errors) == 1 and ("cifar" in errors[0].lower() or "not a usable path" in errors[0]), (
                    text,
                    errors,
                )
            else:
                assert any("using the default checkpoint" in e for e in errors), (text, errors)


def test_a_fresh_start_without_data_offers_the_download_and_then_runs(tiny_checkpoint, monkeypatch):
    """No data anywhere: the Overview still draws the parameter chart, says what to do in the app's
    terms, and one click fetches the archive (here from a server on loopback) and runs the page."""
    import hashlib
    import http.server
    import threading

    import streamlit as st

    archive, ck = tiny_checkpoint
    payload = pathlib.Path(archive).read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv(data_lib.ENV_VAR, raising=False)
        monkeypatch.setenv("LOWRANK_CHECKPOINT", str(ck))
        monkeypatch.setenv(data_lib.URL_ENV_VAR, f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz")
        monkeypatch.setattr(data_lib, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
        st.cache_resource.clear()
        st.cache_data.clear()
        at = AppTest.from_file("../app.py", default_timeout=300).run()
        assert not at.exception
        assert "CIFAR-10 is not on this machine" in at.error[0].value and "sidebar" in at.error[0].value
        assert "--data" not in at.error[0].value  # the app's language, not the CLI's
        assert at.get("plotly_chart")  # the parameter chart draws from the checkpoint alone
        at.button(key="data_download").click().run()
        assert not at.exception and not at.error
        assert [m.label for m in at.metric if m.label == "Test accuracy"]
        assert (data_lib.paths.data_dir() / data_lib.ARCHIVE_NAME).read_bytes() == payload
    finally:
        server.shutdown()


def test_an_offline_download_says_what_to_do_in_the_apps_terms(tiny_checkpoint, monkeypatch):
    import streamlit as st

    _, ck = tiny_checkpoint
    monkeypatch.delenv(data_lib.ENV_VAR, raising=False)
    monkeypatch.setenv("LOWRANK_CHECKPOINT", str(ck))  # the download URL is a dead local port (conftest)
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file("../app.py", default_timeout=300).run()
    at.button(key="data_download").click().run()
    assert not at.exception
    assert any("Could not download CIFAR-10" in e.value and "sidebar" in e.value for e in at.error)


def test_the_checkpoint_picker_lists_checkpoints_trained_here_and_switches_to_them(env):
    import shutil

    from lowrank_core import checkpoint

    _, ck = env
    shutil.copytree(ck, checkpoint.trained_dir("mine"))
    at = AppTest.from_file("../app.py", default_timeout=300).run()
    picker = at.sidebar.selectbox(key="checkpoint_choice")
    assert picker.options[:3] == ["$LOWRANK_CHECKPOINT (ck)", "shipped baseline", "trained here: mine"]
    # A session that picked it (AppTest drops st.navigation's sidebar on a widget rerun, so the
    # choice is set before the run, as a click's callback sets it before the rerun).
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.session_state["checkpoint_choice"] = "trained here: mine"
    at.run()
    assert not at.exception and not at.error
    shown = [c.value for c in at.caption if c.value.startswith("Checkpoint: ")]
    assert shown == [f"Checkpoint: {checkpoint.trained_dir('mine')}"]


def test_shared_mode_lets_no_typed_path_reach_the_server_and_turns_training_off(env, monkeypatch):
    monkeypatch.setenv("LOWRANK_SHARED", "1")
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.session_state["checkpoint_path"] = "/etc"  # typed earlier, say: never read in shared mode
    at.session_state["data_path"] = "/etc/passwd"
    at.run()
    assert not at.exception and not at.error
    assert not at.text_input  # no free path field at all
    assert OTHER_CHECKPOINT_LABEL not in at.sidebar.selectbox(key="checkpoint_choice").options
    assert any("Shared mode" in c.value for c in at.sidebar.caption)
    page = AppTest.from_file("../pages/train_data.py", default_timeout=300).run()
    assert page.button(key="train_start").disabled and page.button(key="cache_clear").disabled
    assert any("off in shared mode" in i.value for i in page.info)


OTHER_CHECKPOINT_LABEL = "another folder…"


def test_shared_mode_is_on_by_default_off_loopback(monkeypatch):
    import streamlit as st

    from pages import common

    monkeypatch.delenv("LOWRANK_SHARED", raising=False)
    for address, shared in (("127.0.0.1", False), ("localhost", False), ("0.0.0.0", True), ("10.0.0.5", True)):
        monkeypatch.setattr(st, "get_option", lambda name, address=address: address)
        assert common.shared_mode() is shared, address
    monkeypatch.setenv("LOWRANK_SHARED", "0")
    assert common.shared_mode() is False


def test_low_rank_curves_fill_themselves_in_the_background(env):
    from lowrank_core import curves

    at = AppTest.from_file("../pages/low_rank.py", default_timeout=300).run()
    assert not at.exception and not at.error
    for threads in list(curves._started.values()):
        for thread in list(threads.values()):
            thread.join(240)
    from pages.common import cached_results

    cached_results.clear()  # its 5-s ttl would still hold the first run's list
    at.run()
    assert not at.exception
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    accuracy = next(s for s in specs if "Test accuracy" in json.dumps(s["layout"].get("title")))
    latency = next(s for s in specs if "Latency, batch" in json.dumps(s["layout"].get("title")))
    forms = [t for t in accuracy["data"] if t.get("name", "").startswith(("factorized", "reconstructed"))]
    assert sum(len(t["x"]) for t in forms) >= 20  # both forms, every grid point, no click needed
    timed = [t for t in latency["data"] if t.get("name", "").startswith(("factorized", "reconstructed"))]
    assert sum(len(t["x"]) for t in timed) >= 5  # and a coarse latency curve, timed after the accuracies
    assert accuracy["layout"]["xaxis"]["range"] == [0, 1.02]


def test_curve_points_come_coarse_first():
    from lowrank_core import curves

    assert curves.coarse_first(list(range(7))) == [0, 2, 4, 6, 1, 3, 5]
