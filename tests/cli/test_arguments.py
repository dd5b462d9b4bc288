"""What the command line says before any work starts: its version, options it does not know, and errors in
the arguments shown before torch loads."""

import subprocess
import sys

import pytest

from diffalign import __version__
from diffalign.cli.main import main


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"diffalign {__version__}"


@pytest.mark.parametrize(
    "argv, suggestion",
    [
        (["train", "--max_steps", "20"], "diffalign train train.max_steps=20"),
        (["train", "configs/demo/kto.yaml", "--learning-rate=1e-4"], "train.learning_rate=1e-4"),
        (["train", "--beta", "5000"], "objective.beta=5000"),
        (["cache", "--resolution", "64"], "data.resolution=64"),
    ],
)
def test_an_unknown_option_of_a_config_command_points_to_the_key_value_form(capsys, argv, suggestion):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"unrecognized option {argv[1] if argv[1].startswith('-') else argv[2]}" in err
    assert suggestion in err and "Traceback" not in err


def test_an_unknown_option_that_names_no_setting_says_so(capsys):
    assert main(["train", "--frobnicate"]) == 2
    assert "no setting is named 'frobnicate'" in capsys.readouterr().err


def test_an_unknown_option_of_another_command_points_to_its_help(capsys):
    assert main(["fuse", "runs/x", "--out", "y", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus (see `diffalign fuse --help`)" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["train", "no/such.yaml"], ["cache", "no/such.yaml"],
                                  ["train", "train.lerning_rate=1"]])
def test_config_errors_come_before_torch_loads(argv):
    probe = (
        "import sys; from diffalign.cli.main import main; "
        f"code = main({argv!r}); print(code, 'torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["2", "False"], run.stdout + run.stderr
    assert "error:" in run.stderr
