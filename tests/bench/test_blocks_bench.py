"""Smoke test of `multisense bench` (multisense.bench.blocks) at tiny sizes: the report has every
expected row with positive figures. It checks the benchmark runs, never how fast anything is."""

import re

from multisense import markdown
from multisense.bench import blocks, cases, memory

NUM = r"([-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?)"


def numbers(line: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(NUM, line)]


def table(report: str, title: str) -> str:
    """The block of the report (blocks are separated by blank lines) whose first line starts with `title`."""
    found = [b for b in report.split("\n\n") if b.startswith(title)]
    assert len(found) == 1, f"expected one table titled {title!r}"
    return found[0]


def row(block: str, *starts: str) -> str:
    """The one line whose whitespace-separated cells begin with `starts`."""
    hits = [ln for ln in block.splitlines() if ln.split()[:len(starts)] == list(starts)]
    assert len(hits) == 1, f"expected one row starting {starts}, found {len(hits)}"
    return hits[0]


def test_quick_bench_prints_every_row_with_positive_numbers(capsys, tmp_path):
    out = tmp_path / "bench.md"
    assert blocks.main(["--quick", "--threads", "1", "--silent", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    resampler_cases, bf16_names, xcase, n = cases.quick_cases()

    ref, fp32, bf16 = (table(report, t) for t in ("Reference matmul", "Perceiver Resampler, fp32",
                                                   "Perceiver Resampler, bf16"))
    xattn, targets = table(report, "Gated cross-attention block"), table(report, "Targets")
    for dtype in ("fp32", "bf16"):
        assert all(v > 0 for v in numbers(row(ref, dtype, f"{n}x{n}x{n}")))
    for case in resampler_cases:
        for p in ("fwd", "fwd+bwd"):
            line = row(fp32, *case.label.split(), p)
            ms, tok_s, gflops, pct, exec_pct = numbers(line.split(p, 1)[1])[:5]
            assert min(ms, tok_s, gflops, pct, exec_pct) > 0
            assert line.rstrip().endswith("-")  # no memory figures in --quick
    bf16_fwd = [c for c in resampler_cases if c.name in bf16_names]
    assert bf16_fwd
    for case in bf16_fwd:
        fp32_ms, bf16_ms, speedup, err = numbers(row(bf16, *case.label.split(), "fwd").split("fwd", 1)[1])[:4]
        assert fp32_ms > 0 and bf16_ms > 0 and speedup > 0 and 0 < err < 0.05
    for kv in ("cached", "projected"):
        for mode in ("immediate", cases.DENSE_WINDOW_1, "all_previous"):
            for m in xcase.media_counts:
                ms, tok_s, ratio = numbers(row(xattn, kv, mode, str(m)).split(mode, 1)[1])[1:4]
                assert ms > 0 and tok_s > 0 and ratio > 0
    for target in ("resampler fwd >=", "resampler fwd+bwd >=", "bf16 autocast fwd", "immediate, cached K/V"):
        assert target in targets

    assert "flags " in report  # the CPU's instruction sets are printed with the figures
    # the markdown file gets one section per device, replaced (not appended) by a second run
    text = out.read_text()
    assert text.count("<!-- bench:cpu-quick:start -->") == 1 and "| target" in text
    markdown.write_section(out, "cpu-quick", "replaced")
    assert out.read_text().count("bench:cpu-quick:start") == 1 and "replaced" in out.read_text()


def test_peak_memory_is_measured_in_a_fresh_process():
    case = cases.ResamplerCase("mem", dim=64, depth=1, num_latents=8, heads=2, dim_head=32, ff_mult=2,
                                batch=1, media=1, frames=16, tokens=256)  # 4096 tokens: MiBs of activations
    fwd, step = memory.memory_of(case, "cpu", bf16=False, threads=1)
    assert 0 <= fwd <= step and step > 1
