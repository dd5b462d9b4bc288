"""scripts/gpu_checks: the plans of the online checks (rl-ddpo, rl-dgpo), the comparison of the two, and the
shell script's list of checks against checks.py's registry."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "scripts" / "gpu_checks" / "checks.py"
SHELL = ROOT / "scripts" / "gpu_checks.sh"


def load_checks(monkeypatch, tmp_path: Path, cpu: bool):
    """checks.py imported afresh with its GPU sizes (cpu=False) or the CPU rehearsal's, GPUCHK_WORK in tmp_path."""
    monkeypatch.setenv("DIFFALIGN_GPU_CHECKS_CPU", "1" if cpu else "0")
    monkeypatch.setenv("GPUCHK_WORK", str(tmp_path / "work"))
    for name in ("GPUCHK_DDPO_CONFIG", "GPUCHK_DGPO_CONFIG", "GPUCHK_DEADLINE"):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location(f"gpu_checks_{'cpu' if cpu else 'gpu'}", CHECKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rl_ddpo_plan_is_what_issue_29_prepared(monkeypatch, tmp_path):
    checks = load_checks(monkeypatch, tmp_path, cpu=False)
    overrides, plan = checks.rl_plan(checks.DDPO_CONFIG, Path("/M"), Path("/O"))
    assert overrides == [
        "model.pretrained=/M", "model.frozen_dtype=float16", "rollout.resolution=512", "rollout.steps=50",
        "rollout.prompts_per_round=2", "rollout.compare_base=false", "train.batch_size=4", "train.grad_accum=4",
        "rollout.inner_epochs=1", "train.max_steps=2", "train.output_dir=/O", "train.trackers=[]",
        "validation.every=0", "train.checkpoint_every=0",
    ]
    assert plan == {
        "config": "configs/sd15/ddpo.yaml", "rounds": 2, "images_per_round": 16, "prompts_per_round": 2,
        "images_per_prompt": 8, "steps_per_round": 1, "rollout_steps": 50, "resolution": 512, "reward": "aesthetic",
        "lora": True, "mixed_precision": "fp16", "timestep_fraction": 1.0,
    }


@pytest.mark.parametrize("cpu", [False, True], ids=["gpu-sizes", "cpu-rehearsal"])
def test_the_rl_dgpo_plan_loads_as_the_preset_with_two_rounds_of_one_group_of_24(monkeypatch, tmp_path, cpu):
    checks = load_checks(monkeypatch, tmp_path, cpu=cpu)
    overrides, plan = checks.rl_plan(checks.DGPO_CONFIG, tmp_path / "model", tmp_path / "out")
    cfg = load_config(RunConfig, checks.DGPO_CONFIG, overrides)
    r, t = cfg.rollout, cfg.train
    assert cfg.objective.name == "dgpo" and cfg.objective.timesteps == 4 and cfg.lora.enabled
    assert (r.prompts_per_round, r.images_per_prompt, r.eta, r.reward) == (1, 24, 0.0, "pickscore")
    assert (r.steps, r.resolution) == ((4, 32) if cpu else (50, 512))
    assert (r.compare_base, r.inner_epochs, cfg.validation.every, t.checkpoint_every) == (False, 1, 0, 0)
    # DGPO trains prompt groups: a round is prompts x inner_epochs / (batch_size x grad_accum) optimizer steps
    steps_per_round = r.prompts_per_round * r.inner_epochs // (t.batch_size * t.grad_accum)
    assert steps_per_round == plan["steps_per_round"] == 1 and t.max_steps == plan["rounds"] == 2
    assert str(t.output_dir) == str(tmp_path / "out") and cfg.model.pretrained == str(tmp_path / "model")
    assert plan["images_per_round"] == 24 and plan["timesteps"] == 4 and "timestep_fraction" not in plan
    assert plan["rollout_steps"] == r.steps and plan["config"] == "configs/sd15/dgpo.yaml"


def test_every_planned_run_parses_and_both_online_runs_are_planned(monkeypatch, tmp_path):
    checks = load_checks(monkeypatch, tmp_path, cpu=True)
    plans = checks.planned_configs()
    labels = [label for label, _, _ in plans]
    assert labels[-2:] == ["rl-ddpo", "rl-dgpo"]
    for label, path, overrides in plans:  # what the env check does on the GPU machine
        assert overrides, label
        load_config(RunConfig, path, overrides)


def test_a_missing_preset_plans_an_empty_run_whose_parse_error_names_it(monkeypatch, tmp_path):
    checks = load_checks(monkeypatch, tmp_path, cpu=True)
    broken = tmp_path / "dgpo.yaml"
    broken.write_text("base: [../nowhere.yaml]\n")
    monkeypatch.setattr(checks, "DGPO_CONFIG", str(broken))
    plans = {label: (path, overrides) for label, path, overrides in checks.planned_configs()}
    assert plans["rl-dgpo"] == (str(broken), [])
    with pytest.raises(Exception, match="nowhere.yaml"):
        load_config(RunConfig, *plans["rl-dgpo"])


def rl_figures(split: dict, images: int) -> dict:
    return {"plan": {"images_per_round": images}, "round_split_median_s": split}


def test_dgpo_per_image_phases_are_divided_by_ddpo_s(monkeypatch, tmp_path):
    checks = load_checks(monkeypatch, tmp_path, cpu=False)
    ddpo = rl_figures({"sample_s": 16.0, "reward_s": 1.6, "train_s": 40.0, "total_s": 57.6}, 16)
    dgpo = rl_figures({"sample_s": 24.0, "reward_s": 2.4, "train_s": 6.0, "total_s": 32.4}, 24)
    ratios = checks.per_image_against(ddpo, dgpo)
    assert ratios == {"sample_s": 1.0, "reward_s": 1.0, "train_s": 0.1, "total_s": 0.375}
    assert checks.per_image_against({}, dgpo) == {} == checks.per_image_against({"error": "x", "plan": {}}, dgpo)
    zero = rl_figures({"sample_s": 0.0, "reward_s": 0.0, "train_s": 0.0, "total_s": 0.0}, 16)
    assert checks.per_image_against(zero, dgpo)["train_s"] is None


def test_the_comparison_reads_rl_ddpo_s_figures_of_the_same_call_or_says_why_not(monkeypatch, tmp_path):
    checks = load_checks(monkeypatch, tmp_path, cpu=True)
    checks.WORK.mkdir(parents=True)
    ran = rl_figures({"sample_s": 24.0, "reward_s": 2.4, "train_s": 6.0, "total_s": 32.4}, 24)

    def fake_run(fig, name, config, label, timeout, anchors):
        assert (name, config, label) == ("rl-dgpo", checks.DGPO_CONFIG, "DGPO") and anchors == {}
        for key, value in ran.items():
            fig[key] = value

    monkeypatch.setattr(checks, "rl_run", fake_run)
    fig = checks.Figures("rl-dgpo")
    checks.check_rl_dgpo(fig)
    assert fig["train_s_per_image_over_ddpo"] is None and fig["per_image_over_ddpo"] is None
    assert fig["ddpo_comparison"].startswith("no rl-ddpo round split in this call")
    assert fig["ddpo_comparison"].endswith("rl-ddpo.figures.json")

    failed = checks.Figures("rl-ddpo")
    failed["error"] = "diffalign train (DDPO): timed out after 300s"
    fig = checks.Figures("rl-dgpo")
    checks.check_rl_dgpo(fig)
    assert fig["ddpo_comparison"].endswith("diffalign train (DDPO): timed out after 300s")

    (checks.WORK / "rl-ddpo.figures.json").write_text(json.dumps(
        rl_figures({"sample_s": 16.0, "reward_s": 1.6, "train_s": 40.0, "total_s": 57.6}, 16)))
    fig = checks.Figures("rl-dgpo")
    checks.check_rl_dgpo(fig)
    assert fig["train_s_per_image_over_ddpo"] == 0.1 and "ddpo_comparison" not in fig.data
    saved = json.loads((checks.WORK / "rl-dgpo.figures.json").read_text())
    assert saved["per_image_over_ddpo"]["total_s"] == 0.375


def test_the_shell_script_runs_every_registered_check_and_its_header_describes_each(monkeypatch, tmp_path):
    checks = load_checks(monkeypatch, tmp_path, cpu=True)
    text = SHELL.read_text()
    ran = re.findall(r"^run_check (\S+)\s+(\S+) \$CHECKS (\S+)", text, flags=re.M)
    assert all(name == sub for name, _, sub in ran)
    names = [name for name, _, _ in ran]
    assert sorted(names) == sorted(checks.CHECKS)
    assert names.index("rl-dgpo") == names.index("rl-ddpo") + 1
    described = re.findall(r"^#   (\S+)\s{2,}", text, flags=re.M)
    assert set(checks.CHECKS) <= set(described)
    assert dict((name, budget) for name, budget, _ in ran)["rl-dgpo"].isdigit()
