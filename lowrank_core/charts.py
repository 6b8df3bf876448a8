"""Plotly figures shared by the pages and the HTML report (no Streamlit here)."""

from __future__ import annotations

from typing import Callable

import plotly.graph_objects as go

from lowrank_core import methods, report


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
