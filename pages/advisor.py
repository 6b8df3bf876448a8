"""The advisor: the smallest variant within a drop, or the most accurate within
a budget; every candidate it reports measured on the full test set."""

import pandas as pd
import plotly.express as px
import streamlit as st

from lowrank_core import advisor
from lowrank_core.methods.svd import BASES as SVD_BASES
from pages.common import (
    DISTILLED,
    clear_in_memory_results,
    config_or_stop,
    export_buttons,
    fmt_mib,
    get_engine,
    long_jobs_note,
    metrics_then_latency,
    run_with_errors,
    session,
    shared_mode,
)


def predicted_vs_measured(frame: pd.DataFrame) -> None:
    """How good the prediction is: predicted against measured drop, one point per candidate."""
    if "predicted_drop_points" not in frame or "basis" not in frame:
        return
    shown = frame.dropna(subset=["predicted_drop_points"])
    if shown.empty:
        return
    fig = px.scatter(shown, x="predicted_drop_points", y="drop_points", color="basis", hover_name="label")
    fig.update_layout(
        height=320,
        title="Predicted vs measured drop, every candidate",
        xaxis_title="predicted (see above)",
        yaxis_title="measured drop (points)",
    )
    st.plotly_chart(fig, key="advisor_prediction_chart")


QUESTIONS = ("smallest within an accuracy drop", "most accurate within a budget")

st.title("Compression advisor")
eng = get_engine()
if eng is not None:
    question = st.radio("Question", QUESTIONS, key="advisor_question", horizontal=True)
    c1, c2, c3 = st.columns(3)
    minimize = c1.selectbox(
        "Cost",
        ["params", "bytes", "latency"],
        key="advisor_minimize",
        help="parameters, stored bytes, or measured latency at batch 1,000",
    )
    if question == QUESTIONS[0]:
        max_drop = c2.number_input("Allowed drop (accuracy points)", 0.0, 20.0, 1.0, 0.1, key="advisor_drop")
        budget = None
    else:
        max_drop = 1.0
        budget = c2.number_input("Budget (share of the baseline's cost)", 0.01, 1.0, 0.1, 0.01, key="advisor_budget")
    finetune = c3.selectbox(
        "Fine-tune each candidate (steps, frozen convolutions)",
        [0, 300, 1000],
        key="advisor_finetune",
        disabled=shared_mode(),
        help=f"training is {long_jobs_note()}" if shared_mode() else DISTILLED,
    )
    b1, b2 = st.columns(2)
    int8 = b1.toggle("Also try int8 storage on top", True, key="advisor_int8")
    prune_first = b1.toggle(
        "Also try structured pruning before the SVD",
        True,
        key="advisor_prune",
        help="pipelines: dead units dropped (lossless), or the weakest 30–80 % of hidden units, then each "
        "basis's best ranks on the smaller matrices (the calibrated refit fits the kept units to the original ones)",
    )
    basis = b2.radio(
        "SVD basis",
        ("all",) + SVD_BASES,
        key="advisor_basis",
        horizontal=True,
        help="all: every basis searched, the best measured answer wins. activations: truncate LᵀW, whitened by "
        "each layer's inputs on 5,000 training images; calibrated: that, then each layer refit in closed form "
        "to the original outputs from the inputs the compressed layers before it give",
    )
    config = config_or_stop(
        lambda: advisor.AdvisorConfig(
            max_drop=float(max_drop),
            minimize=minimize,
            finetune_steps=int(finetune),
            methods=(advisor.SVD,) + (advisor.PRUNE,) * prune_first + (advisor.INT8,) * int8,
            basis=basis,
        )
    )
    st.caption(
        "Every basis: per-layer ranks from one-layer drops measured at five rank fractions, interpolated "
        "along each layer's output error predicted in closed form. Then, for "
        "each basis, pipelines (structured pruning at a bisected sparsity, then its ranks). Every candidate is measured on "
        "every test image, and predictions only choose what to measure; int8 on top of the answer, measured. "
        "A cold search of every basis took about 1 minute on the shipped baseline and 2 on a default-preset "
        "checkpoint on a 2-core machine (docs/runtimes.md); cached afterwards."
    )
    request = (session(), question, config, budget)
    if st.button("Find it", type="primary", key="advisor_run"):
        bar = st.progress(0.0, text="starting")

        def on_progress(stage: str, share: float) -> None:
            bar.progress(min(1.0, share), text=stage)

        if budget is None:
            answer = run_with_errors(advisor.smallest_within, eng, config, on_progress)
        else:
            answer = run_with_errors(advisor.most_accurate_within, eng, float(budget), config, on_progress)
        bar.empty()
        if answer is not None:
            st.session_state["advisor_answer"] = (request, answer)
            clear_in_memory_results()  # the candidates are new results for the Overview and Compare pages
    stored = st.session_state.get("advisor_answer")
    if stored and stored[0] == request:
        answer = stored[1]
        search = answer["advisor"]
        if not search["found"]:
            st.warning(f"No measured candidate meets it ({search['question']}); the baseline is the answer.")
        else:
            base_summary = search["baseline"]
            st.success(
                f"**{search['question'].capitalize()}**: {answer['label']} — accuracy {answer['accuracy']:.2%} "
                f"({100 * (answer['accuracy'] - base_summary['accuracy']):+.2f} points on {answer['n_test']:,} test "
                f"images), {base_summary['params'] / answer['params']:.1f}× fewer parameters, "
                f"{base_summary['bytes'] / answer['bytes']:.1f}× smaller stored ({fmt_mib(answer['bytes'])})."
            )
        if winner := search.get("winner"):
            others = ", ".join(
                f"{ratio:.2f}× the best {basis}-basis candidate's {config.minimize}"
                for basis, ratio in winner["cost_ratio"].items()
            )
            st.caption(
                f"Won: {' → '.join(winner['steps'])} ({winner['basis'] or 'no SVD'} basis); its cost is 1 / {others}"
                if others
                else f"Won: {' → '.join(winner['steps'])}"
            )
        metrics_then_latency(lambda timed: answer, measure_latency=True)
        export_buttons(eng, answer, answer["label"], "advisor_export")
        if search.get("with_int8"):
            q = search["with_int8"]
            st.caption(
                f"The same ranks with int8 storage on top: accuracy {q['accuracy']:.2%} "
                f"({-q['drop_points']:+.2f} points), {fmt_mib(q['bytes'])} stored "
                f"({search['baseline']['bytes'] / q['bytes']:.1f}× smaller than the baseline)."
            )
        st.subheader("Every candidate measured")
        frame = pd.DataFrame(search["candidates"] + search.get("pipelines", []))
        frame["ranks"] = frame["ranks"].map(lambda r: ", ".join(f"{k} {v}" for k, v in r.items()))
        st.dataframe(frame.drop(columns=["method"]), hide_index=True)
        st.caption(
            "predicted_drop_points: the one-layer drops added up, measured at five rank fractions per layer and "
            "interpolated between them along the output error each layer's truncation is predicted to make "
            "(the tail energy of its directions on calibration data). Pipelines (a sparsity "
            "column) put structured pruning before the SVD. drop_points is measured. All candidates are cached: "
            "they appear on the Overview's chart and in Compare & export."
        )
        predicted_vs_measured(frame)
