"""The claims multisense is built on, measured: each experiment trains through `train` and
scores through `eval`, so it sits above both (`multisense experiment NAME`, `multisense compare`).

- runner: the `multisense experiment` command and the Flamingo claims (tanh gates at zero,
  frame embeddings, media masking);
- touch: the touch world's (occlusion, attention over time, missing sensors, the Perceiver's cost);
- crosslingual: PaLI's zero-shot transfer to languages never seen with an image;
- compare: every family measured on the same inputs (cost, demo tasks, few-shot).
"""
