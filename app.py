"""Streamlit entry point: ``streamlit run app.py``."""

import streamlit as st

from pages.common import sidebar

st.set_page_config(page_title="Low-rank compression explorer", layout="wide")
sidebar()
navigation = st.navigation([
    st.Page("pages/model_card.py", title="Model card", default=True),
    st.Page("pages/low_rank.py", title="Low-rank (SVD)"),
    st.Page("pages/spectra.py", title="Spectra"),
])
navigation.run()
