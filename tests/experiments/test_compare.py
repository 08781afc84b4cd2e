import json

from multisense.cli import main as cli
from multisense.experiments.compare import FRAMES, IMAGES


def test_compare_quick_produces_every_cell_and_marks_context_overflow(tmp_path):
    out, page = tmp_path / "out", tmp_path / "docs" / "compare.md"
    page.parent.mkdir()
    page.write_text("# Compare\n\nprose that stays\n")
    assert cli(["compare", "--quick", "--out", str(out), "--docs", str(page)]) == 0
    result = json.loads((out / "compare.json").read_text())
    limit = result["cost"]["context_limit"]
    keys = [f"images={m}" for m in IMAGES] + [f"frames={f}" for f in FRAMES]
    for family in ("flamingo", "llava"):
        fam = result["cost"]["families"][family]
        assert fam["trainable_parameters"] > 0
        assert list(fam["cells"]) == keys
        for cell in fam["cells"].values():
            assert cell["flops"] > 0 and cell["seconds"] > 0 and cell["peak_mib"] > 0
            assert cell["overflow"] == (cell["context_tokens"] > limit)
        assert set(result["scenes"][family]["kinds"]) == {"caption", "colour", "shape", "count", "position"}
        assert set(result["fewshot"][family]["shots"]) == {"0", "2", "4", "8"}
    lora = result["scenes"]["llava + LoRA"]  # the second recipe: the projector and LoRA on the LM train
    assert set(lora["kinds"]) == set(result["scenes"]["llava"]["kinds"]) and lora["options"] == {"lora_rank": 16}
    assert lora["trainable_parameters"] > result["scenes"]["llava"]["trainable_parameters"]
    assert result["scenes"]["llava"]["trainable_parameters"] == result["cost"]["families"]["llava"]["trainable_parameters"]
    flamingo, llava = (result["cost"]["families"][f] for f in ("flamingo", "llava"))
    # PaLI trains everything; over the T5 its image tokens are the encoder's, with no position limit
    pali, t5 = (result["cost"]["families"][f] for f in ("pali", "pali (T5 encoder-decoder)"))
    assert pali["trainable_parameters"] > llava["trainable_parameters"] and pali["tokens_per_image"] == 64
    assert t5["tokens_per_image"] == 64 and t5["context_limit"] is None
    assert not any(c["overflow"] for c in t5["cells"].values()) and list(t5["cells"]) == keys
    assert set(result["scenes"]["pali"]["kinds"]) == set(result["scenes"]["llava"]["kinds"])
    assert flamingo["tokens_per_image"] == 1 and llava["tokens_per_image"] == 64  # the marker / 8x8 patches
    assert not any(c["overflow"] for c in flamingo["cells"].values())
    assert llava["cells"]["images=32"]["overflow"] and not llava["cells"]["images=1"]["overflow"]
    # more images cost LLaVA more FLOPs than Flamingo, which keeps one marker per image in context
    assert llava["cells"]["images=32"]["flops"] > flamingo["cells"]["images=32"]["flops"]
    text = page.read_text()
    assert "prose that stays" in text and "context overflow" in text and (page.parent / "compare.png").is_file()
