"""What changes: per-class accuracy, confusion matrices and the test images
whose prediction a variant changes, against the baseline or another variant."""

import plotly.graph_objects as go
import streamlit as st

from lowrank_core import charts, report
from pages.common import baseline_accuracy, cached_results, get_engine, run_with_errors, session, style

GALLERY = 24  # images shown per group

st.title("What compression changes")
eng = get_engine()
if eng is not None:
    results = cached_results(session())
    labels = report.unique_labels(results)
    variants = [label for label, r in labels.items() if r["method"] != "baseline"]
    if not variants:
        st.info("Nothing measured yet: move a slider on a method's page, or ask the Advisor.")
        st.stop()
    c1, c2 = st.columns(2)
    headline = report.headline_variant(results, baseline_accuracy(session()))
    by_record = {id(r): label for label, r in labels.items()}
    start = variants.index(by_record[id(headline)]) if headline is not None and id(headline) in by_record else 0
    picked = c1.selectbox(
        "Variant",
        variants,
        index=start,
        key="changes_variant",
        help="opens on the headline variant: the fewest parameters within 1 point",
    )
    reference_options = ["Baseline"] + [v for v in variants if v != picked]
    reference_label = c2.selectbox("Against", reference_options, key="changes_reference")
    reference = None if reference_label == "Baseline" else labels[reference_label]
    with st.spinner(f"Predicting all {eng.data.y_test.shape[0]:,} test images…"):
        found = run_with_errors(eng.impact, labels[picked], reference)
    if found is None:
        st.stop()
    names = found["class_names"]
    st.caption(
        f"All {found['n_test']:,} test images: {reference_label} {found['accuracy_reference']:.2%}, "
        f"variant {found['accuracy_variant']:.2%}. {len(found['fixed']):,} images fixed, "
        f"{len(found['broken']):,} broken, {len(found['changed_wrong']):,} changed from one wrong class to another."
    )

    per_class = found["per_class"]
    fig = charts.per_class(found, reference_label, labels[picked]["method"])
    left, right = st.columns(2)
    left.plotly_chart(style(fig, "Accuracy per class", "class", "accuracy (%)"), key="changes_per_class")
    delta = go.Figure(
        go.Bar(
            x=names,
            y=[100 * c["change"] for c in per_class],
            marker_color=["#2ca02c" if c["change"] >= 0 else "#d62728" for c in per_class],
            text=[f"{100 * c['change']:+.1f}" for c in per_class],
        )
    )
    right.plotly_chart(style(delta, "Change per class", "class", "points"), key="changes_delta")

    left, right = st.columns(2)
    for col, key, title, scale in (
        (left, "confusion_variant", "Confusion matrix of the variant (rows: true class)", "Blues"),
        (right, "confusion_change", f"Change against {reference_label} (variant − reference)", "RdBu"),
    ):
        matrix = found[key]
        heat = go.Figure(
            go.Heatmap(
                z=matrix,
                x=names,
                y=names,
                colorscale=scale,
                text=matrix,
                texttemplate="%{text}",
                zmid=0 if key == "confusion_change" else None,
            )
        )
        heat.update_yaxes(autorange="reversed")
        col.plotly_chart(style(heat, title, "predicted", "true", 460), key=f"changes_{key}")

    for group, title in (("broken", "Broken: right before, wrong now"), ("fixed", "Fixed: wrong before, right now")):
        indices = found[group]
        st.subheader(f"{title} ({len(indices):,} images)")
        if not indices:
            st.caption("None.")
            continue
        reference_predictions = eng.predictions(reference or eng.evaluate("baseline", with_latency=False))
        variant_predictions = eng.predictions(labels[picked])
        shown = indices[:GALLERY]
        cols = st.columns(8)
        for i, index in enumerate(shown):
            cols[i % 8].image(
                eng.data.x_test[index],
                caption=f"#{index}: {names[eng.data.y_test[index]]}; was {names[reference_predictions[index]]}, "
                f"now {names[variant_predictions[index]]}",
                width=96,
            )
        if len(indices) > GALLERY:
            st.caption(f"The first {GALLERY} of {len(indices):,}, in test-set order.")
