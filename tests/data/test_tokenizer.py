"""Word-level tokenizer: coverage of the scenes language, special tokens, round trip."""

import pytest

from multisense.data import scenes
from multisense.data.tokenizer import add_missing_words, train_word_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    # A tiny corpus: coverage must come from the scenes vocabulary, not from luck.
    return train_word_tokenizer(scenes.text_corpus(5, seed=0))


def test_covers_every_scenes_word(tokenizer):
    vocab = tokenizer.get_vocab()
    assert set(scenes.VOCABULARY) <= set(vocab)
    for line in scenes.text_corpus(300, seed=1):
        assert tokenizer.unk_token_id not in tokenizer(line)["input_ids"]


def test_special_tokens_and_no_image_marker(tokenizer):
    assert "<image>" not in tokenizer.get_vocab()
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == ("<pad>", "<eos>", "<unk>")
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}) == 3
    # CLIP's text tower reads eos_token_id == 2 as a legacy checkpoint; see tokenizer.py.
    assert tokenizer.eos_token_id != 2
    assert tokenizer("hello red")["input_ids"][0] == tokenizer.unk_token_id


def test_extra_words_are_added():
    tokenizer = train_word_tokenizer(["caption : a red circle ."], extra_words=["banana"])
    assert "banana" in tokenizer.get_vocab()


def test_round_trip(tokenizer):
    for line in scenes.text_corpus(100, seed=2):
        ids = tokenizer(line)["input_ids"]
        assert len(ids) == len(line.split())  # one token per word, no added specials
        assert tokenizer.decode(ids) == line
        assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == line


def test_missing_words_are_added_whole_after_the_vocabulary():
    tokenizer = train_word_tokenizer(scenes.text_corpus(5, seed=0))  # its own: the fixture is shared
    size = len(tokenizer)
    assert add_missing_words(tokenizer, ["red", "finger", "like", "finger"]) == ["finger", "like"]
    assert len(tokenizer) == size + 2
    ids = tokenizer("the finger is likely red", add_special_tokens=False)["input_ids"]
    assert ids[1] == size and ids[3] == tokenizer.unk_token_id  # "like" is not matched inside "likely"
    assert add_missing_words(tokenizer, ["finger"]) == []
