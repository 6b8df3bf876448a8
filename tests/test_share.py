"""The shareable HTML report: self-contained (no network), with what it promises."""

import re

from lowrank_core import data as data_lib, engine, share
from lowrank_core.methods.svd import SvdConfig


def test_report_is_self_contained_and_complete(tiny_checkpoint, tmp_path):
    archive, ck = tiny_checkpoint
    eng = engine.Engine(ck, data_lib.load_cifar10(archive), cache_root=tmp_path / "cache")
    eng.evaluate("baseline", with_latency=False)
    eng.evaluate("svd", SvdConfig(0.9, "factorized"), with_latency=False)
    eng.evaluate("quantize", with_latency=True)
    text = share.build(eng)
    assert text.startswith("<!DOCTYPE html>") and "Model card" in text and "Chosen variants" in text
    # plotly.js inlined once; nothing fetched from anywhere when opened.
    assert len(re.findall(r"<script", text)) >= 2 and not re.search(r"<script[^>]+src=", text)
    markup = re.sub(r"<script.*?</script>", "", text, flags=re.S)  # links inside plotly.js are not fetched
    assert not re.search(r"""(src|href)=["']https?://""", markup)
    assert text.count("Plotly.newPlot") >= 1
    assert "measured by this product on all 40 test images" in text
    # int8 keeps the tiny network within 1 point, so the report shows what it changes, counted from predictions.
    assert "What changes" in text
    found = eng.impact(eng.evaluate("quantize", with_latency=False))
    assert f"{len(found['fixed']):,} test images fixed, {len(found['broken']):,} broken" in text
    shown = sum(min(share.CHANGED_IMAGES, len(found[g])) for g in ("fixed", "broken"))
    assert text.count("<figure><img src='data:image/png;base64,") == shown  # one embedded image per change shown
