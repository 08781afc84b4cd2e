"""The pretraining loop every embedded backbone shares: AdamW with warmup and cosine decay over
the library's one training loop (`train.loop.fit`), and saving in Hugging Face format with a
small summary beside the weights."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from ..train.loop import fit

SUMMARY_FILE = "train_summary.json"
_LOSS_WINDOW = 50  # steps averaged into the reported final loss, which is noisy step to step
_WARMUP_FRACTION = 0.05


def pretrain(model: torch.nn.Module, batches, *, steps: int, lr: float, desc: str, progress: bool) -> dict:
    """Minimise the token loss (or `model(**batch).loss`) over `steps` batches (an encoder-decoder's
    logits line up with its labels, a causal LM's predict the next one: `models.scoring`).
    Returns a small summary."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimiser, num_warmup_steps=max(1, int(_WARMUP_FRACTION * steps)),
                                               num_training_steps=steps)
    start = time.perf_counter()
    history = fit(model, batches, steps=steps, optimizer=optimiser, scheduler=schedule, max_grad_norm=1.0,
                  progress=progress, desc=desc)
    model.eval()
    return {"steps": steps, "final_loss": float(np.mean([r["loss"] for r in history[-_LOSS_WINDOW:]])),
            "seconds": time.perf_counter() - start}


def save(model, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path, summary: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return out_dir
