from multisense.bench import throughput as training


def test_training_bench_quick_run_prints_every_case(capsys):
    assert training.main(["--quick", "--images", "1", "2", "--no-ddp", "--out", ""]) == 0
    out = capsys.readouterr().out
    assert "immediate" in out and "all_previous" in out and "samples/s" in out


def test_a_document_has_one_marker_per_image_and_no_loss_on_markers():
    import torch

    b = training.batch(3, 4, 63, torch.Generator().manual_seed(0))
    assert ((b["input_ids"] == 63).sum(1) == 4).all() and b["pixel_values"].shape[:2] == (3, 4)
    assert (b["labels"][b["input_ids"] == 63] == -100).all()
