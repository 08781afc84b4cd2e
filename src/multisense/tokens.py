"""Conventions of the token sequences every model family shares.

MEDIA_MARKER: the text of the one token that stands for a media item (an image, or a clip) in
interleaved text; `FlamingoModel.from_lm(tokenizer=...)` adds it to a tokenizer.
IGNORE_INDEX: the label of a token that carries no loss (PyTorch's `cross_entropy` default and
Hugging Face's convention).
"""

MEDIA_MARKER = "<image>"
IGNORE_INDEX = -100
