"""Streamlit entry point: ``streamlit run app.py``."""

import streamlit as st

from lowrank_core import data, memory, priority

# Freed memory stays with the server for its next arrays (see lowrank_core.memory); Streamlit's
# threads have their own heaps already, so only threads started from here on share the main one.
memory.apply()
# CIFAR-10 decodes on the other core while the pages' imports (JAX, Plotly) run on this one.
data.prefetch()  # the default source, as a session with nothing typed into the sidebar reads

from pages.common import sidebar  # after the prefetch has started

st.set_page_config(page_title="Low-rank compression explorer", layout="wide")
sidebar()
navigation = st.navigation(
    [
        st.Page("pages/overview.py", title="Overview", default=True),
        st.Page("pages/advisor.py", title="Advisor"),
        st.Page("pages/low_rank.py", title="Low-rank (SVD)"),
        st.Page("pages/sensitivity.py", title="Sensitivity"),
        st.Page("pages/spectra.py", title="Spectra"),
        st.Page("pages/pruning.py", title="Pruning"),
        st.Page("pages/layer_removal.py", title="Layer removal"),
        st.Page("pages/storage.py", title="Int8 & cleanup"),
        st.Page("pages/changes.py", title="What changes"),
        st.Page("pages/compare.py", title="Compare & export"),
        st.Page("pages/train_data.py", title="Train / data"),
    ]
)
with priority.foreground():  # a retraining elsewhere yields to this run (see lowrank_core.priority)
    navigation.run()
