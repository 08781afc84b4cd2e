import pytest
import torch

from multisense.data.collate import Document, Sample, collate, pad_media


class WordTokenizer:
    """Enough of a Hugging Face tokenizer for collation: whitespace words -> ids."""

    pad_token_id, eos_token_id = 0, 1

    def __init__(self):
        self.vocab = {"<pad>": 0, "<eos>": 1}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]}


def img(frames=1):
    return torch.randn(frames, 3, 4, 4)


def test_training_batch_puts_loss_on_target_and_eos_only_right_padded():
    tok = WordTokenizer()
    batch = collate([Sample("<image> q :", "red", [img()]), Sample("<image> a long q :", "blue .", [img()])], tok)
    ids, labels, att = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == att.shape == (2, 8)
    red, blue, dot = (tok.vocab[w] for w in ("red", "blue", "."))
    assert labels[0].tolist() == [-100, -100, -100, red, 1, -100, -100, -100]
    assert labels[1].tolist() == [-100] * 5 + [blue, dot, 1]
    assert att[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


def test_generation_batch_is_left_padded_prompts_only():
    tok = WordTokenizer()
    batch = collate([Sample("<image> q :", "red", [img()]), Sample("<image> a long q :", "x", [img()])], tok,
                    for_generation=True)
    assert "labels" not in batch
    assert batch["attention_mask"][0].tolist() == [0, 0, 1, 1, 1]
    assert batch["input_ids"][0, -1] == batch["input_ids"][1, -1] == tok.vocab[":"]


def test_media_and_frames_are_padded_with_masks():
    a, b = img(2), img(3)
    pixels, mask = pad_media([[a], [b, img(1)]])
    assert pixels.shape == (2, 2, 3, 3, 4, 4)
    assert mask.tolist() == [[[1, 1, 0], [0, 0, 0]], [[1, 1, 1], [1, 0, 0]]]
    assert torch.equal(pixels[0, 0, :2], a) and torch.equal(pixels[1, 0], b)
    assert not pixels[0, 1].any()


def test_mismatched_frame_sizes_are_named():
    with pytest.raises(ValueError, match="sample 1 item 0"):
        pad_media([[img()], [torch.randn(1, 3, 5, 5)]])


def test_document_labels_skip_text_before_first_media_and_markers():
    tok = WordTokenizer()
    tok.vocab["<image>"] = 2
    batch = collate([Document("intro text <image> a cat . <image> a dog .", [img(), img()]),
                     Document("<image> x", [img()])], tok)
    ids, labels = batch["input_ids"], batch["labels"]
    row = ids[0].tolist()
    assert labels[0, :3].tolist() == [-100, -100, -100]  # "intro text <image>"
    assert labels[0, 6].item() == -100 and row[6] == 2  # the second marker
    assert labels[0, 3:6].tolist() == row[3:6] and labels[0, 7:11].tolist() == row[7:11]
    assert labels[0, 10].item() == tok.eos_token_id
    assert labels[1].tolist() == [-100, tok.vocab["x"], 1] + [-100] * 8  # padding carries no loss
    assert batch["pixel_values"].shape[:3] == (2, 2, 1)
    assert batch["frame_mask"].tolist() == [[[True], [True]], [[True], [False]]]


def test_document_without_media_has_no_loss_and_multi_token_marker_is_named():
    tok = WordTokenizer()
    assert (collate([Document("just text here")], tok)["labels"] == -100).all()
    with pytest.raises(ValueError, match="marker"):
        collate([Document("a <img> b")], tok, marker="<img> x")


def test_words_align_with_the_text_token_for_token_or_are_refused():
    import numpy as np

    from multisense.data.tasks import VOCABULARY, get_task
    from multisense.data.tokenizer import train_word_tokenizer

    tok = train_word_tokenizer([" ".join(VOCABULARY)], extra_words=VOCABULARY)
    docs = [get_task("fewshot_mapped").training_document(np.random.default_rng(i)) for i in range(4)]
    batch = collate(docs, tok, words=True)
    marker = batch["input_ids"] == tok.convert_tokens_to_ids("<image>")
    differs = batch["words_input_ids"] != batch["input_ids"]
    assert torch.equal(differs, marker)  # only the markers change: each into its class word
    bad = Document(docs[0].text, docs[0].media, words=docs[0].words + " extra")
    with pytest.raises(ValueError, match=r"samples\[1\].words"):
        collate([docs[1], bad], tok, words=True)


def test_seq2seq_puts_the_prompt_in_input_ids_and_the_same_loss_tokens_in_labels():
    tok = WordTokenizer()
    tok.vocab["<image>"] = 2
    samples = [Sample("<image> q :", "red", [img()]), Document("<image> a blue cat .", [img()]),
               Sample("<image> a long q :", "blue .", [img()])]
    causal = collate(samples, tok)
    batch = collate(samples, tok, seq2seq=True)
    assert batch["input_ids"].shape == (3, 5) and batch["labels"].shape == (3, 5)
    assert batch["input_ids"][1].tolist() == [2, 0, 0, 0, 0] and batch["attention_mask"][1].tolist() == [1, 0, 0, 0, 0]
    for b in range(3):  # the loss falls on the same tokens as in the causal layout, in order
        causal_targets = causal["labels"][b][causal["labels"][b] != -100].tolist()
        assert batch["labels"][b][batch["labels"][b] != -100].tolist() == causal_targets
        prompt = causal["input_ids"][b][(causal["labels"][b] == -100) & (causal["attention_mask"][b] == 1)]
        assert batch["input_ids"][b][batch["attention_mask"][b] == 1].tolist() == prompt.tolist()
    assert torch.equal(batch["pixel_values"], causal["pixel_values"])
    gen = collate(samples, tok, seq2seq=True, for_generation=True)
    assert "labels" not in gen and gen["attention_mask"][1].tolist() == [0, 0, 0, 0, 1]


def test_seq2seq_refuses_a_document_with_media_in_its_target():
    tok = WordTokenizer()
    tok.vocab["<image>"] = 2
    with pytest.raises(ValueError, match=r"samples\[0\]: a Document with 2 media markers.*data.max_shots=0"):
        collate([Document("<image> a cat . <image> a dog .", [img(), img()])], tok, seq2seq=True)
