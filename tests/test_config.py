from dataclasses import dataclass, field

import pytest

from multisense.config import apply_overrides, check_choice, check_number, from_dict, load_config


@dataclass
class Inner:
    size: int = 2
    rate: float | None = None


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    betas: tuple[float, float] = (0.9, 0.99)
    paths: list[str] = field(default_factory=list)


def test_nested_values_are_typed_and_converted():
    cfg = from_dict(Outer, {"inner": {"size": 3, "rate": 1}, "betas": [0.5, 1], "paths": ["a"]})
    assert cfg.inner == Inner(size=3, rate=1.0) and isinstance(cfg.inner.rate, float)
    assert cfg.betas == (0.5, 1.0) and cfg.paths == ["a"]


def test_wrong_types_and_unknown_keys_are_named_with_their_path():
    with pytest.raises(ValueError, match=r"inner.size: expected int, got True"):
        from_dict(Outer, {"inner": {"size": True}})
    with pytest.raises(ValueError, match=r"'inner.sise'.*did you mean 'inner.size'"):
        from_dict(Outer, {"inner": {"sise": 1}})
    with pytest.raises(ValueError, match=r"inner: expected a mapping"):
        from_dict(Outer, {"inner": 3})


def test_overrides_parse_yaml_scalars_and_do_not_touch_the_input(tmp_path):
    base = {"inner": {"size": 1}}
    out = apply_overrides(base, ["inner.rate=3e-4", "inner.size=5", "name=run 1"])
    assert base == {"inner": {"size": 1}} and out["inner"] == {"size": 5, "rate": "3e-4"}
    assert from_dict(Outer, out).inner.rate == 3e-4  # YAML 1.1 reads 3e-4 as a string: still a float
    with pytest.raises(ValueError, match="key.sub=value"):
        apply_overrides(base, ["inner.size"])
    preset = tmp_path / "p.yaml"
    preset.write_text("inner:\n  size: 7\n")
    assert load_config(Outer, preset, ["name=y"]) == Outer(name="y", inner=Inner(size=7))


def test_value_checks_name_the_key_and_what_was_expected():
    check_choice("bf16", ("fp32", "bf16"), "train.precision")
    with pytest.raises(ValueError, match=r"^train.precision: expected one of 'fp32', 'bf16', got 'fp16'$"):
        check_choice("fp16", ("fp32", "bf16"), "train.precision")
    check_number(1, "train.steps", at_least=1)
    with pytest.raises(ValueError, match=r"^train.steps: expected a number >= 1, got -5$"):
        check_number(-5, "train.steps", at_least=1)
    with pytest.raises(ValueError, match=r"^optim.betas\[1\]: expected a number >= 0 and < 1, got 1.0$"):
        check_number(1.0, "optim.betas[1]", at_least=0, below=1)
    for bad in (float("nan"), float("inf")):  # never meant; NaN would pass every comparison
        with pytest.raises(ValueError, match=r"optim.lr: expected a number > 0"):
            check_number(bad, "optim.lr", above=0)
