from multisense.bench.perceiver import run


def test_perceiver_bench_counts_and_compares_on_a_small_case():
    r = run(tokens=2048, dim=32, latents=8, chunk=512, threads=1, lengths=[64, 128])
    p = r["perceiver"]
    assert p["flops"] > 0 and p["seconds"] > 0 and p["peak_rss_mib"] > p["input_mib"]
    for row in r["self_attention"]:  # the counted FLOPs of the layer equal the formula
        assert row["flops"] == row["formula_flops"]
    full = r["self_attention_full"]
    assert full["flops"] == 4 * 2048 ** 2 * 32 + 8 * 2048 * 32 ** 2 and full["flops"] > p["flops"]
    assert full["seconds_extrapolated"] > r["self_attention"][-1]["seconds"]
