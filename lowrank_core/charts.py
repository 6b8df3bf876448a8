"""Plotly figures shared by the pages and the HTML report (no Streamlit here)."""

from __future__ import annotations

from typing import Callable

import plotly.graph_objects as go

from lowrank_core import methods, report, sensitivity


def style(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 360) -> go.Figure:
    """``fig`` with the product's title, axis titles, height, margins and a legend below."""
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=height,
        margin=dict(t=50, b=40, l=60, r=20),
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def pareto(
    results: list[dict],
    cost_of: Callable[[dict], float],
    accuracy_of: Callable[[dict], float] = lambda r: r["accuracy"],
) -> go.Figure:
    """Accuracy (%) against a cost of every result, one trace per method, the
    Pareto-optimal points outlined and joined by a dashed front."""
    front = report.pareto_mask([cost_of(r) for r in results], [accuracy_of(r) for r in results])
    fig = go.Figure()
    for method in sorted({r["method"] for r in results}, key=lambda m: (m != methods.REFERENCE, m)):
        points = [(r, on_front) for r, on_front in zip(results, front) if r["method"] == method]
        fig.add_trace(
            go.Scatter(
                x=[cost_of(r) for r, _ in points],
                y=[100 * accuracy_of(r) for r, _ in points],
                mode="markers",
                name=report.method_label(method),
                text=[report.describe(r) for r, _ in points],
                hovertemplate="%{text}<br>accuracy %{y:.2f} %<br>cost %{x:.3g}<extra></extra>",
                marker=dict(
                    color=report.method_colour(method),
                    size=[14 if f else 9 for _, f in points],
                    symbol="star" if method == methods.REFERENCE else "circle",
                    line=dict(width=[2 if f else 0 for _, f in points], color="#000"),
                ),
            )
        )
    order = sorted((r for r, f in zip(results, front) if f), key=cost_of)
    fig.add_trace(
        go.Scatter(
            x=[cost_of(r) for r in order],
            y=[100 * accuracy_of(r) for r in order],
            mode="lines",
            name="Pareto front",
            line=dict(color="#999", dash="dash"),
        )
    )
    return fig


def per_class(found: dict, reference_label: str, variant_method: str) -> go.Figure:
    """Grouped bars of each class's accuracy (%), reference beside variant, from :func:`impact.impact`'s answer."""
    names, rows = found["class_names"], found["per_class"]
    return go.Figure(
        [
            go.Bar(x=names, y=[100 * c["reference"] for c in rows], name=reference_label, marker_color="#222222"),
            go.Bar(
                x=names,
                y=[100 * c["variant"] for c in rows],
                name="variant",
                marker_color=report.method_colour(variant_method),
            ),
        ],
        layout=dict(barmode="group"),
    )


def sensitivity_heatmap(
    rows: list[dict], base: dict, shown: list[str], fractions: list[float], names: dict
) -> go.Figure:
    """Drop in points per (layer, fraction); cells not measured yet stay empty (the table fills in)."""
    grid = {(r["layer"], r["fraction"]): r for r in rows}
    drop = [
        [100 * (base["accuracy"] - grid[(n, f)]["accuracy"]) if (n, f) in grid else None for f in fractions]
        for n in shown
    ]
    measured = [v for row in drop for v in row if v is not None]
    # Cells placed on a log rank-fraction axis: the hidden layers' differences sit between 0.005 and 0.1.
    fig = go.Figure(
        go.Heatmap(
            z=drop,
            x=sensitivity.log_cell_edges(fractions),
            y=[names[n] for n in shown],
            colorscale="Reds",
            zmin=0,
            zmax=max([0.5, *measured]),
            colorbar=dict(title="drop (points)"),
            text=[
                [
                    f"f={f:g}, k={grid[(n, f)]['rank']}: accuracy {grid[(n, f)]['accuracy']:.2%}"
                    if (n, f) in grid
                    else "not measured yet"
                    for f in fractions
                ]
                for n in shown
            ],
            texttemplate="%{z:.1f}",
            hovertemplate="%{y}<br>%{text}<br>drop %{z:.2f} points<extra></extra>",
        )
    )
    fig.update_xaxes(type="log", tickvals=[f for f in fractions if f in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)])
    fig.update_yaxes(autorange="reversed")
    return style(fig, "Accuracy drop with one layer truncated (the rest intact)", "rank fraction f (log)", "layer", 380)
