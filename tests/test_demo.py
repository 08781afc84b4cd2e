"""The main job end to end at toy size: backbones built (tiny), trained, evaluated, reported."""

import json

import transformers

import multisense.demo as demo
from multisense import FlamingoModel


def test_demo_runs_end_to_end_and_writes_its_report(tmp_path, monkeypatch):
    cfg = demo.DemoConfig(steps=3, batch_size=4, eval_samples=3, out_dir=str(tmp_path / "run"), progress=False,
                          num_latents=4, resampler_depth=1)
    summary = demo.run(cfg)
    out = tmp_path / "run"
    for name in ("report.md", "results.json", "history.json", "loss.png", "gates.png", "attention.png",
                 "model/config.json", "model/model.safetensors"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"caption", "colour", "shape", "count", "position"}
    assert all(0.0 <= r["vision"] <= 1.0 and 0.0 <= r["text_only"] <= 1.0 for r in results.values())
    assert len(summary["final_gates"]["attn"]) == 4  # one gated block per layer of the 4-layer LM
    assert "| caption exact match |" in (out / "report.md").read_text()
    # The saved model carries its tokenizer, media marker included, as `multisense eval` loads it.
    model = FlamingoModel.from_pretrained(out / "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "model")
    assert tokenizer.convert_tokens_to_ids("<image>") == model.config.media_token_id
