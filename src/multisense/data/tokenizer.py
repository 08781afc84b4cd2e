"""Word-level tokenizer for the scenes language, wrapped as a Hugging Face fast tokenizer.

Words are split on whitespace only (punctuation is already its own word in `scenes`), and
decoding joins tokens with single spaces, so every scenes line round-trips exactly.
`add_missing_words` teaches any tokenizer the words of a new task that it can only read as its
unknown token (the embedded LMs' closed vocabulary has no "finger"); a model gives them
trainable input embeddings (FlamingoConfig.added_token_ids).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from multisense.data.scenes import VOCABULARY

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# Order fixes the ids pad=0, eos=1, unk=2. The eos id must not be 2: CLIP's text tower treats
# eos_token_id == 2 as a legacy checkpoint and pools at the highest token id instead of at eos.
SPECIAL_TOKENS = (PAD, EOS, UNK)


def train_word_tokenizer(corpus: list[str], *, extra_words: Iterable[str] = (),
                         vocabulary: Iterable[str] = VOCABULARY) -> PreTrainedTokenizerFast:
    """Train a WordLevel tokenizer on `corpus`, always covering every word of `vocabulary`
    (by default every word `scenes` can produce; `data.languages` passes its three languages').

    The corpus only orders the vocabulary by frequency; the full `vocabulary` and
    `extra_words` are added so that no sampled corpus can leave a reachable word unknown.
    No `<image>` token here: the multimodal model adds that marker itself.
    """
    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=0)
    backend.train_from_iterator([*corpus, " ".join(vocabulary), " ".join(extra_words)], trainer=trainer)
    # No bos is ever inserted; sharing the eos id keeps configs that expect a bos id happy.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, bos_token=EOS, unk_token=UNK
    )


def add_missing_words(tokenizer, words: Iterable[str]) -> list[str]:
    """Add each of `words` that `tokenizer` spells with its unknown token as a token of its own
    (a whole word only: "like" is not matched inside "likely"); returns the words added, whose
    ids follow the tokenizer's others. A tokenizer without an unknown token (byte-level BPE)
    spells every word and gets none."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    missing = [w for w in dict.fromkeys(words) if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
    if missing:
        tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in missing])
    return missing
