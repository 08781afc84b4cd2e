import pytest

from multisense import cli

BAD = ["train", "data.task=video", "train.precision=fp16"]


def test_a_user_error_is_one_line_on_stderr_with_exit_code_2(capsys):
    assert cli.main(BAD) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "multisense train: error: train.precision: expected one of 'fp32', 'bf16', 'auto', got 'fp16'\n"


def test_debug_raises_with_the_traceback(monkeypatch):
    with pytest.raises(ValueError, match="train.precision"):
        cli.main(["--debug", *BAD])
    monkeypatch.setenv("MULTISENSE_DEBUG", "1")
    with pytest.raises(ValueError, match="train.precision"):
        cli.main(BAD)


def test_an_error_that_is_not_the_users_keeps_its_traceback(monkeypatch):
    def bug(argv):
        raise TypeError("a bug in multisense")

    monkeypatch.setitem(cli.COMMANDS, "train", bug)
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["train"])


def test_eval_argument_errors_take_the_same_form(capsys, tmp_path):
    assert cli.main(["eval", "--model", str(tmp_path), "--task", "video", "--task-arg", "frames"]) == 2
    assert capsys.readouterr().err == "multisense eval: error: --task-arg 'frames': expected KEY=VALUE\n"


def _help(argv: list[str], capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def test_demo_help_describes_every_flag_with_its_default(capsys, monkeypatch):
    import dataclasses

    from multisense.demo import DemoConfig

    text = _help(["demo", "--help"], capsys, monkeypatch)
    for f in dataclasses.fields(DemoConfig):
        assert f.metadata.get("help"), f"DemoConfig.{f.name} has no help text"
        assert f"{' '.join(f.metadata['help'].split())} (default: {f.default})" in text, f.name


def test_eval_help_shows_the_defaults(capsys, monkeypatch):
    text = _help(["eval", "--help"], capsys, monkeypatch)
    for default in ("[0, 2, 4, 8]", "[0, 1, 2]", "100", "16"):
        assert f"(default: {default})" in text


def test_eval_of_a_model_that_is_no_local_directory_is_named(capsys):
    assert cli.main(["eval", "--model", "no/such/model", "--task", "video"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multisense eval: error: --model: expected a local directory") and "'no/such/model'" in err
