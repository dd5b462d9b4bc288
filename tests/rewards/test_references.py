"""Scorers named by reference, `path/to/file.py:NAME` or `package.module:NAME`: classes, functions, their options,
the check of every result, and one clear error for each way a reference can be wrong."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.evaluation.scoring import build_scorers, check_scorer_names, parse_scorer_options
from diffalign.rewards import build_scorer, score_in_batches
from diffalign.rewards.references import check_scores

REWARDS = '''
import math

import numpy as np
import torch
from PIL import Image


def redness(images, prompts, weight=1.0):
    """The mean red channel / 255, times weight; it insists on PIL RGB images."""
    assert all(isinstance(image, Image.Image) and image.mode == "RGB" for image in images)
    assert isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)
    return [weight * float(np.asarray(image)[..., 0].mean()) / 255 for image in images]


class Brightness:
    scale = "mean pixel / 255"
    logit_scale = 10.0

    def __init__(self, offset=0.0, device=None):
        self.offset = offset
        self.device = device

    def score(self, images, prompts):
        return torch.tensor([np.asarray(image, dtype=np.float64).mean() / 255 + self.offset for image in images])


class Plain:
    def score(self, images, prompts):
        return np.arange(len(prompts), dtype=np.float32)


class NoScore:
    pass


class OneArg:
    def score(self, images):
        return [0.0] * len(images)


def one_arg(images):
    return [0.0] * len(images)


def needs_target(images, prompts, *, target):
    return [target] * len(images)


def by_prompt(images, prompts):
    """What the first prompt asks for."""
    n = len(images)
    return {"none": None, "text": ["a"] * n, "column": [[1.0]] * n, "one": [1.0], "scalar": 0.5, "inf": [math.inf] * n,
            "ragged": [[1.0], [1.0, 2.0]][:n] + [[1.0]] * (n - 2), "nan": [math.nan] * n, "ints": list(range(n)),
            "complex": torch.ones(n, dtype=torch.complex64)}[prompts[0]]


def _private(images, prompts):
    return [0.0] * len(images)


THRESHOLD = 0.5
INSTANCE = Plain()
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture()
def rewards_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding rewards.py, made the current directory and kept off sys.path (as for the `diffalign`
    script), so that `rewards.py:NAME` is a file reference relative to the current directory."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    write(tmp_path / "rewards.py", REWARDS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A package `diffalign_test_userpkg` on sys.path with a scores module and a module that fails to import."""
    root = tmp_path / "site"
    write(root / "diffalign_test_userpkg" / "__init__.py", "")
    write(root / "diffalign_test_userpkg" / "scores.py", '''
        import numpy as np

        def green(images, prompts):
            return np.array([np.asarray(image)[..., 1].mean() / 255 for image in images])
        ''')
    write(root / "diffalign_test_userpkg" / "broken.py", "import not_installed_dependency_of_the_user\n")
    monkeypatch.syspath_prepend(str(root))
    yield "diffalign_test_userpkg"
    for name in [n for n in sys.modules if n.startswith("diffalign_test_userpkg")]:
        del sys.modules[name]


def solid(rgb: tuple[int, int, int], size: int = 4) -> np.ndarray:
    return np.full((size, size, 3), rgb, np.uint8)


def test_a_function_in_a_file_gets_pil_rgb_images_and_its_options(rewards_dir: Path):
    batch = np.stack([solid((255, 0, 0)), solid((51, 0, 0))])  # an array batch, as an online round gives
    scorer = build_scorer("rewards.py:redness", device="cpu", dtype="fp32", batch_size=2, weight=2.0)
    assert (scorer.name, scorer.scale, scorer.logit_scale) == ("rewards.py:redness", "user", 1.0)
    torch.testing.assert_close(scorer.score(batch, ["a", "b"]), torch.tensor([2.0, 0.4], dtype=torch.float64))
    grey = Image.new("L", (4, 4), 102)  # converted to RGB for the function
    assert scorer.score([grey], ["c"]).tolist() == pytest.approx([0.8])


def test_a_class_in_a_file_gets_its_options_and_device_dtype_batch_size_only_where_named(rewards_dir: Path):
    scorer = build_scorer("rewards.py:Brightness", device="cpu", dtype="fp16", batch_size=3, offset=0.5)
    assert (scorer.name, scorer.scale, scorer.logit_scale) == ("rewards.py:Brightness", "mean pixel / 255", 10.0)
    assert scorer.device == "cpu" and scorer.offset == 0.5  # the inner scorer's attributes
    images = [Image.fromarray(solid((255, 255, 255))), Image.fromarray(solid((0, 0, 0)))]
    torch.testing.assert_close(scorer.score(images, ["a", "b"]), torch.tensor([1.5, 0.5], dtype=torch.float64))
    plain = build_scorer("rewards.py:Plain", device="cpu", dtype="fp16", batch_size=3)  # takes none of them
    assert plain.scale == "user" and plain.score(images, ["a", "b"]).tolist() == [0.0, 1.0]


def test_two_references_to_one_file_load_it_once(rewards_dir: Path):
    log = rewards_dir / "loads.txt"
    write(rewards_dir / "counted.py", f'''
        open({str(log)!r}, "a").write("loaded\\n")

        def one(images, prompts):
            return [1.0] * len(images)

        def two(images, prompts):
            return [2.0] * len(images)
        ''')
    first = build_scorer("counted.py:one")
    second = build_scorer(f"{rewards_dir / 'counted.py'}:two")
    build_scorer("./counted.py:one")
    assert log.read_text() == "loaded\n"
    assert first.inner.function.__globals__ is second.inner.function.__globals__


def test_a_package_module_reference(user_package: str):
    scorer = build_scorer(f"{user_package}.scores:green", device="cpu")
    assert scorer.name == "diffalign_test_userpkg.scores:green"
    assert scorer.score(np.stack([solid((0, 255, 0)), solid((0, 0, 0))]), ["a", "b"]).tolist() == [1.0, 0.0]


def test_check_scorer_names_resolves_references_and_keeps_the_did_you_mean(rewards_dir: Path):
    check_scorer_names(["shapes", "rewards.py:redness", "rewards.py:Brightness"])
    with pytest.raises(ValueError, match="rewards.py has no 'rednes'"):
        check_scorer_names(["shapes", "rewards.py:rednes"])
    with pytest.raises(KeyError, match="unknown scorer 'shapse'; did you mean 'shapes'"):
        check_scorer_names(["shapse"])


def test_scorer_options_of_references_whose_names_hold_dots_and_colons():
    names = ["rewards.py:redness", "pkg.scores:green", "shapes"]
    items = ["rewards.py:redness.weight=2", "pkg.scores:green.threshold=0.5", "pkg.scores:green.mode=fast"]
    assert parse_scorer_options(items, names) == {"rewards.py:redness": {"weight": 2},
                                                  "pkg.scores:green": {"threshold": 0.5, "mode": "fast"}}


def test_an_unknown_option_reads_as_for_a_registered_scorer(rewards_dir: Path):
    with pytest.raises(ValueError) as function:
        build_scorers(["rewards.py:redness"], {"rewards.py:redness": {"colour": "red"}}, device="cpu")
    assert str(function.value) == ("scorer 'rewards.py:redness' has no option 'colour' "
                                   "(redness() got an unexpected keyword argument 'colour')")
    with pytest.raises(ValueError) as cls:
        build_scorers(["rewards.py:Brightness"], {"rewards.py:Brightness": {"colour": "red"}}, device="cpu")
    assert str(cls.value) == ("scorer 'rewards.py:Brightness' has no option 'colour' "
                              "(Brightness.__init__() got an unexpected keyword argument 'colour')")
    with pytest.raises(ValueError) as missing:
        build_scorer("rewards.py:needs_target", device="cpu")
    assert str(missing.value) == (
        "scorer reference 'rewards.py:needs_target': needs_target(images, prompts, *, target) cannot be called with "
        "the options given (none): missing a required argument: 'target'; set options with --scorer-option "
        "rewards.py:needs_target.KEY=VALUE, or as {weight: W, KEY: VALUE} in rollout.rewards")
    assert build_scorer("rewards.py:needs_target", target=3).score([Image.new("RGB", (2, 2))], ["x"]).tolist() == [3.0]


def test_bad_references_name_the_reference_and_what_was_expected(rewards_dir: Path, user_package: str):
    write(rewards_dir / "broken.py", "raise RuntimeError('no GPU here')\n")
    write(rewards_dir / "sibling.py", "import helpers_beside_it\n")
    write(rewards_dir / "script.py", "import sys\nsys.exit('usage: script.py CONFIG')\n")
    forms = "expected path/to/file.py:NAME or package.module:NAME"
    cases = {
        "nofile.py:f": (FileNotFoundError, f"scorer reference 'nofile.py:f': no file {rewards_dir / 'nofile.py'} "
                                           f"(relative to the current directory {rewards_dir})"),
        "broken.py:f": (ValueError, f"scorer reference 'broken.py:f': importing {rewards_dir / 'broken.py'} failed: "
                                    "RuntimeError: no GPU here"),
        "script.py:f": (ValueError, f"scorer reference 'script.py:f': importing {rewards_dir / 'script.py'} failed: "
                                    "SystemExit: usage: script.py CONFIG"),
        "sibling.py:f": (ValueError, f"scorer reference 'sibling.py:f': importing {rewards_dir / 'sibling.py'} failed: "
                                     "ModuleNotFoundError: No module named 'helpers_beside_it' (a module beside the file "
                                     "is importable only with its folder on PYTHONPATH)"),
        "no_such_pkg.scores:f": (ValueError, "scorer reference 'no_such_pkg.scores:f': no module 'no_such_pkg.scores' "
                                             "(No module named 'no_such_pkg'); install it, put its folder on PYTHONPATH, "
                                             "or name a file as path/to/file.py:NAME"),
        "rewards:redness": (ValueError, "scorer reference 'rewards:redness': no module 'rewards' (No module named "
                                        "'rewards'); did you mean rewards.py:redness?"),
        f"{user_package}.broken:f": (ValueError, "scorer reference 'diffalign_test_userpkg.broken:f': importing "
                                                 "diffalign_test_userpkg.broken failed: ModuleNotFoundError: No module "
                                                 "named 'not_installed_dependency_of_the_user'"),
        "rewards.py:rednes": (ValueError, "scorer reference 'rewards.py:rednes': rewards.py has no 'rednes'; its public "
                                          "functions and classes: Brightness, NoScore, OneArg, Plain, by_prompt, "
                                          "needs_target, one_arg, redness"),
        f"{user_package}.scores:blue": (ValueError, "scorer reference 'diffalign_test_userpkg.scores:blue': module "
                                                    "diffalign_test_userpkg.scores has no 'blue'; its public functions "
                                                    "and classes: green"),
        "rewards.py:THRESHOLD": (ValueError, "scorer reference 'rewards.py:THRESHOLD' is a float, not a scorer: name a "
                                             "class with a score(images, prompts) method or a function (images, "
                                             "prompts) -> one float per image"),
        "rewards.py:NoScore": (ValueError, "scorer reference 'rewards.py:NoScore': class NoScore has no "
                                           "score(images, prompts) method"),
        "rewards.py:INSTANCE": (ValueError, "scorer reference 'rewards.py:INSTANCE' is an object (Plain), not a class or "
                                            "function: name its class (Plain) so that options and the device reach it"),
        "rewards.py:one_arg": (ValueError, "scorer reference 'rewards.py:one_arg': one_arg(images) cannot be called as "
                                           "one_arg(images, prompts); a function scorer takes the images and their "
                                           "prompts, then its options as keywords"),
        "rewards.py:OneArg": (ValueError, "scorer reference 'rewards.py:OneArg': OneArg.score(self, images) cannot be "
                                          "called as score(images, prompts)"),
        "rewards.py:": (ValueError, f"scorer reference 'rewards.py:': {forms} (NAME a class or function of that file "
                                    "or module)"),
        "rewards/extra:f": (ValueError, f"scorer reference 'rewards/extra:f': 'rewards/extra' is neither a .py file nor "
                                        f"a module name; {forms}"),
        "http://127.0.0.1:8765": (ValueError, "scorer 'http://127.0.0.1:8765' looks like a server address: a served "
                                              "scorer is named remote:http://127.0.0.1:8765"),
    }
    for ref, (error, message) in cases.items():
        with pytest.raises(error) as raised:
            check_scorer_names([ref])
        assert str(raised.value) == message, ref
    write(rewards_dir / "syntax.py", "def f(:\n")
    with pytest.raises(ValueError, match=r"^scorer reference 'syntax.py:f': importing .*syntax.py failed: SyntaxError: "):
        check_scorer_names(["syntax.py:f"])


def test_every_result_is_checked_to_be_one_float_per_image(rewards_dir: Path):
    scorer = build_scorer("rewards.py:by_prompt")
    images = [Image.new("RGB", (2, 2))] * 2
    expected = "one float per image (a list, NumPy array or tensor of 2 numbers)"
    wrong = {
        "none": f"returned None, not {expected}",
        "text": f"returned a list of text, not {expected}",
        "column": f"returned scores of shape (2, 1) for 2 images, not {expected}",
        "one": f"returned scores of shape (1,) for 2 images, not {expected}",
        "scalar": f"returned scores of shape () for 2 images, not {expected}",
        "inf": "returned inf for image 0: return a finite float, or NaN for an image it cannot score",
        "ragged": f"returned a list of uneven nesting, not {expected}",
        "complex": f"returned a tensor of complex numbers, not {expected}",
    }
    for prompt, message in wrong.items():
        with pytest.raises(ValueError) as raised:
            scorer.score(images, [prompt, prompt])
        assert str(raised.value) == message, prompt
    assert scorer.score(images, ["ints", "ints"]).tolist() == [0.0, 1.0]
    assert scorer.score(images, ["nan", "nan"]).isnan().all()  # NaN: an image it cannot score
    assert check_scores(torch.tensor([1, 2]), 2).dtype == torch.float64

    result = score_in_batches(scorer, images + images, ["ints", "ints", "none", "none"], batch_size=2)
    assert result.values()[:2].tolist() == [0.0, 1.0] and result.values()[2:].isnan().all()
    assert [f.reason for f in result.failures] == [
        "rewards.py:by_prompt: returned None, not one float per image (a list, NumPy array or tensor of 1 number)"] * 2
