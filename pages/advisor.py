"""The advisor: the smallest variant within a drop, or the most accurate within
a budget; every candidate it reports measured on the full test set."""

import pandas as pd
import streamlit as st

from lowrank_core import advisor
from lowrank_core.errors import ConfigError
from pages.common import (
    baseline_result,
    clear_in_memory_results,
    fmt_mib,
    get_engine,
    keys,
    metric_row,
    run_with_errors,
)

QUESTIONS = ("smallest within an accuracy drop", "most accurate within a budget")

st.title("Compression advisor")
eng = get_engine()
if eng is not None:
    question = st.radio("Question", QUESTIONS, key="advisor_question", horizontal=True)
    c1, c2, c3 = st.columns(3)
    minimize = c1.selectbox("Cost", ["params", "bytes", "latency"], key="advisor_minimize",
                            help="parameters, stored bytes, or measured latency at batch 1,000")  # fmt: skip
    if question == QUESTIONS[0]:
        max_drop = c2.number_input("Allowed drop (accuracy points)", 0.0, 20.0, 1.0, 0.1, key="advisor_drop")
        budget = None
    else:
        max_drop = 1.0
        budget = c2.number_input("Budget (share of the baseline's cost)", 0.01, 1.0, 0.1, 0.01, key="advisor_budget")
    finetune = c3.selectbox("Fine-tune each candidate (steps, frozen convolutions)", [0, 300, 1000],
                            key="advisor_finetune")  # fmt: skip
    b1, b2 = st.columns(2)
    int8 = b1.toggle("Also try int8 storage on top", True, key="advisor_int8")
    prune_first = b1.toggle(
        "Also try structured pruning before the SVD",
        True,
        key="advisor_prune",
        help="pipelines: dead units dropped (lossless), or the weakest 30–70 % of hidden units, then the same "
        "ranks on the smaller matrices (weights basis)",
    )
    basis = b2.radio(
        "SVD basis",
        ["weights", "activations"],
        key="advisor_basis",
        horizontal=True,
        help="activations: truncate LᵀW, whitened by each layer's inputs on 5,000 training images",
    )
    try:
        config = advisor.AdvisorConfig(max_drop=float(max_drop), minimize=minimize, finetune_steps=int(finetune),
                                       methods=("svd",) + ("prune",) * prune_first + ("quantize",) * int8,
                                       basis=basis)  # fmt: skip
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()
    st.caption(
        "Searches per-layer SVD ranks (factorized) from the per-layer sensitivity table, then measures each "
        "candidate on every test image; predictions only choose what to measure. Then pipelines (structured "
        "pruning at a bisected sparsity, then those ranks) and int8 on top, each measured. Cold: the table "
        "(≈ 25–30 s on 2 cores, the SVDs included) and up to 8 + 4 measurements, ≈ 45–50 s in all; cached afterwards."
    )
    request = (keys(), question, config, budget)
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
        base = baseline_result(*keys())
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
        metric_row(answer, base)
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
        st.caption("All of them are cached: they appear on the Overview's chart and in Compare & export.")
