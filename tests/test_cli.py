"""CLI: bad input gives one line on stderr (`error: ...`), exit 1 (typer usage errors: 2), no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

EVAL = ("evaluate",)


@pytest.fixture(scope="module")
def truncated_pt(tmp_path_factory, model_test_state) -> Path:
    root = tmp_path_factory.mktemp("trunc")
    full = root / "full.pt"
    torch.save(model_test_state, full)
    data = full.read_bytes()
    cut = root / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.fixture(scope="module")
def rgb32_student(tmp_path_factory) -> Path:
    from robustdistill.models import DataHint, build_student, save_classifier

    path = tmp_path_factory.mktemp("st") / "rgb32.safetensors"
    return save_classifier(build_student("tiny_cnn", DataHint(10, (3, 32, 32))), path, config={"dataset": "imagefolder"})


def check_error(result, helpers, *needles: str, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.stdout == ""
    assert "Traceback" not in result.output
    return helpers.assert_one_line_error(result.stderr, *needles)


# --------------------------------------------------------------------------- eps
@pytest.mark.parametrize(
    ("eps", "needles"),
    [
        ("8", ("did you mean 8/255",)),
        ("255", ("did you mean 255/255",)),
        ("2.5", ("did you mean 2.5/255",)),
        ("-1", ("non-negative",)),
        ("nan", ("non-negative",)),
        ("inf", ("non-negative",)),
        ("1e9", ("out of range", "8/255")),
        ("8/0", ("not a number", "8/255")),
        ("abc", ("not a number",)),
    ],
)
def test_bad_eps(cli, helpers, model_test_pt: Path, eps: str, needles: tuple[str, ...]) -> None:
    result = cli(*EVAL, model_test_pt, "--arch", "resnet18", "--dataset", "digits", "--eps", eps)
    check_error(result, helpers, *needles)


# --------------------------------------------------------------------------- names
def test_unknown_model_name(cli, helpers) -> None:
    line = check_error(cli(*EVAL, "nonexistent_model", "--dataset", "digits"), helpers, "nonexistent_model")
    assert "robustbench:NAME" in line and "resnet18" in line


def test_unknown_robustbench_name(cli, helpers, tmp_path: Path) -> None:
    line = check_error(cli(*EVAL, "robustbench:Sehwag2021Proxy_R19", "--model-dir", tmp_path, "--dataset", "digits"),
                       helpers, "did you mean 'Sehwag2021Proxy_R18'")
    assert "Wong2020Fast" in line


def test_unknown_dataset(cli, helpers, model_test_pt: Path) -> None:
    check_error(cli(*EVAL, model_test_pt, "--arch", "resnet18", "--dataset", "cifar11"), helpers,
                "unknown dataset 'cifar11'", "imagefolder")


def test_unknown_attack(cli, helpers, model_test_pt: Path) -> None:
    check_error(cli(*EVAL, model_test_pt, "--arch", "resnet18", "--dataset", "digits", "--attacks", "clean,pgdx"),
                helpers, "unknown attack 'pgdx'", "did you mean 'pgd'")


def test_unknown_arch(cli, helpers, model_test_pt: Path) -> None:
    check_error(cli(*EVAL, model_test_pt, "--arch", "resnet-18", "--dataset", "digits"), helpers,
                "unknown architecture", "did you mean 'resnet18'")


# --------------------------------------------------------------------------- files
def test_missing_file(cli, helpers, tmp_path: Path) -> None:
    check_error(cli(*EVAL, tmp_path / "nope.pt", "--arch", "resnet18", "--dataset", "digits"), helpers, "does not exist")


@pytest.mark.parametrize("command", [["evaluate", "MODEL"], ["distill", "--teacher", "MODEL", "--out", "OUT"],
                                     ["fairness-report", "MODEL", "bundled:digits"]])
def test_a_missing_model_file_is_named_before_anything_it_would_record(cli, helpers, tmp_path: Path, command) -> None:
    """No --dataset / --eps given: the mistyped path is the error, not the dataset or budget it cannot tell."""
    missing, out = tmp_path / "typo.safetensors", tmp_path / "run"
    args = [str(missing) if a == "MODEL" else str(out) if a == "OUT" else a for a in command]
    check_error(cli(*args), helpers, "does not exist", "typo.safetensors")
    assert not out.exists()


def test_a_missing_model_file_is_named_by_the_api_too(tmp_path: Path) -> None:
    from robustdistill import evaluate
    from robustdistill.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate(str(tmp_path / "typo.safetensors"))


def test_truncated_checkpoint(cli, helpers, truncated_pt: Path) -> None:
    check_error(cli(*EVAL, truncated_pt, "--arch", "resnet18", "--dataset", "digits"), helpers, "truncated")


def test_html_checkpoint(cli, helpers, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_text("<!doctype html><html><body>Sign in</body></html>")
    check_error(cli(*EVAL, path, "--arch", "resnet18", "--dataset", "digits"), helpers, "HTML page")


def test_malicious_checkpoint(cli, helpers, tmp_path: Path, model_test_state) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": model_test_state, "x": helpers.Marker(str(marker))}, path)
    check_error(cli(*EVAL, path, "--arch", "resnet18", "--dataset", "digits"), helpers, "beyond tensors")
    assert not marker.exists()


def test_plain_checkpoint_without_arch(cli, helpers, model_test_pt: Path) -> None:
    check_error(cli(*EVAL, model_test_pt, "--dataset", "digits"), helpers, "--arch")


# --------------------------------------------------------------------------- model does not fit the data
def test_class_count_mismatch_plain_checkpoint(cli, helpers, model_test_pt: Path, image_folder_3class: Path) -> None:
    check_error(cli(*EVAL, model_test_pt, "--arch", "resnet18", "--dataset", "imagefolder", "--data-dir", image_folder_3class),
                helpers, "class-count mismatch", "10 classes", "3")


def test_class_count_mismatch_zoo_model(cli, helpers, robustbench_cache: Path, image_folder_3class: Path, no_network) -> None:
    check_error(cli(*EVAL, "robustbench:Sehwag2021Proxy_R18", "--model-dir", robustbench_cache, "--dataset", "imagefolder",
                    "--data-dir", image_folder_3class), helpers, "predicts 10 classes but the data has 3")


def test_channel_mismatch(cli, helpers, model_test_pt: Path) -> None:
    # 3-channel 32x32 CIFAR weights on 1-channel 8x8 digits.
    check_error(cli(*EVAL, model_test_pt, "--arch", "resnet18", "--dataset", "digits"), helpers, "3-channel", "channel")


def test_channel_mismatch_self_describing_model(cli, helpers, rgb32_student: Path) -> None:
    check_error(cli(*EVAL, rgb32_student, "--dataset", "digits"), helpers, "3-channel images but the data has 1 channel")


def test_size_mismatch(cli, helpers, rgb32_student: Path, image_folder: Path) -> None:
    check_error(cli(*EVAL, rgb32_student, "--dataset", "imagefolder", "--data-dir", image_folder, "--image-size", "16"),
                helpers, "32x32", "16x16", "--image-size 32")


def test_size_mismatch_zoo_model(cli, helpers, robustbench_cache: Path, image_folder: Path, no_network) -> None:
    check_error(cli(*EVAL, "robustbench:Sehwag2021Proxy_R18", "--model-dir", robustbench_cache, "--dataset", "imagefolder",
                    "--data-dir", image_folder, "--image-size", "16"), helpers, "32x32", "16x16")


def test_robustbench_not_cached(cli, helpers, tmp_path: Path, no_network) -> None:
    result = cli(*EVAL, "robustbench:Sehwag2021Proxy_R18", "--model-dir", tmp_path, "--dataset", "digits")
    assert result.exit_code == 1
    line = helpers.assert_one_line_error(result.stderr, "place its checkpoint at")
    assert str(tmp_path / "cifar10" / "Linf" / "Sehwag2021Proxy_R18.pt") in line


# --------------------------------------------------------------------------- data
def test_missing_cifar10(cli, helpers, tmp_path: Path, model_test_pt: Path, no_network) -> None:
    check_error(cli(*EVAL, model_test_pt, "--arch", "resnet18", "--dataset", "cifar10", "--data-dir", tmp_path / "none"),
                helpers, "CIFAR-10 not found", "--download", "--data-dir")


def test_imagefolder_without_data_dir(cli, helpers, model_test_pt: Path) -> None:
    check_error(cli(*EVAL, model_test_pt, "--arch", "resnet18", "--dataset", "imagefolder"), helpers, "--data-dir")


def test_unknown_split(cli, helpers, model_test_pt: Path, image_folder: Path) -> None:
    check_error(cli(*EVAL, model_test_pt, "--arch", "resnet18", "--dataset", "imagefolder", "--data-dir", image_folder,
                    "--split", "bogus", "-n", "2"), helpers, "unknown split 'bogus'")


# --------------------------------------------------------------------------- typer usage errors: exit 2
@pytest.mark.parametrize(
    "args",
    [
        ("-n", "0"),
        ("--batch-size", "0"),
        ("--pgd-steps", "nope"),
        ("--bogus-flag",),
    ],
)
def test_usage_errors_exit_2(cli, model_test_pt: Path, args: tuple[str, ...]) -> None:
    result = cli(*EVAL, model_test_pt, "--arch", "resnet18", "--dataset", "digits", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_missing_argument_exit_2(cli) -> None:
    assert cli("evaluate").exit_code == 2


# --------------------------------------------------------------------------- debug, list, help
@pytest.mark.slow
def test_debug_shows_traceback(helpers, tmp_path: Path) -> None:
    proc = helpers.run_module("--debug", "evaluate", tmp_path / "nope.pt", "--arch", "resnet18", "--dataset", "digits")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_no_debug_in_subprocess_is_one_line(helpers, tmp_path: Path) -> None:
    proc = helpers.run_module("evaluate", tmp_path / "nope.pt", "--arch", "resnet18", "--dataset", "digits", "--eps", "8")
    assert proc.returncode == 1
    helpers.assert_one_line_error(proc.stderr, "8/255")


def test_debug_in_process_raises(cli, tmp_path: Path) -> None:
    from robustdistill.errors import CheckpointError

    result = cli("--debug", *EVAL, tmp_path / "nope.pt", "--arch", "resnet18", "--dataset", "digits")
    assert result.exit_code == 1 and isinstance(result.exception, CheckpointError)


def test_list_prints_registries(cli) -> None:
    result = cli("list")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for section in ("students", "teachers", "datasets", "attacks"):
        assert section in out
    for entry in ("resnet18", "tiny_cnn", "wrn-D-K", "robustbench:NAME", "timm:NAME", "digits", "imagefolder", "pgd", "aa"):
        assert entry in out


def test_list_one_section(cli, helpers) -> None:
    result = cli("list", "datasets")
    assert result.exit_code == 0 and "cifar100" in result.stdout and "resnet18" not in result.stdout
    check_error(cli("list", "bogus"), helpers, "unknown registry 'bogus'")


def test_list_robustbench(cli) -> None:
    result = cli("list", "robustbench")
    assert result.exit_code == 0
    names = result.stdout.split()
    assert "Sehwag2021Proxy_R18" in names and names == sorted(names)


@pytest.mark.slow
def test_module_help_and_version(helpers) -> None:
    proc = helpers.run_module("--help")
    assert proc.returncode == 0 and "evaluate" in proc.stdout and "list" in proc.stdout
    import robustdistill

    proc = helpers.run_module("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"robustdistill {robustdistill.__version__}"


def test_evaluate_help(cli) -> None:
    result = cli("evaluate", "--help")
    assert result.exit_code == 0
    for option in ("--eps", "--attacks", "--arch", "--model-dir", "--n-examples", "--out"):
        assert option in result.stdout


@pytest.mark.parametrize("command", [[], ["distill"], ["train-teacher"], ["evaluate"], ["fairness-report"], ["export"],
                                     ["list"]])
def test_help_shows_no_type_after_a_flag(cli, command: list[str]) -> None:
    """On/off flags (ours and typer's --help, --version, --install-completion) take no value: no ``<bool>``."""
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "--help" in result.output and "<bool>" not in result.output
