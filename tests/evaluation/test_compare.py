import pytest

from diffalign.evaluation.compare import criterion_means, format_results


def test_criterion_means_cover_criteria_that_only_some_prompts_name():
    per_image = [
        {"colour": 1.0, "shape": 0.5, "reward": 0.75},
        {"colour": 0.0, "shape": 1.0, "size": 0.2, "reward": 0.4},
        {"colour": 0.5, "shape": 0.0, "size": 0.6, "reward": 0.3},
    ]
    means = criterion_means(per_image)
    assert list(means) == ["colour", "shape", "reward", "size"]
    assert means["colour"] == pytest.approx(0.5)
    assert means["size"] == pytest.approx(0.4)  # over the two images whose prompt names a size
    assert means["reward"] == pytest.approx(1.45 / 3)


def test_format_results_lists_each_criterion_and_the_win_rate():
    results = {
        "pairs": 4,
        "prompts": 2,
        "scorer": "shapes",
        "base": {"mean": 0.5},
        "tuned": {"mean": 0.6},
        "criteria": {"size": {"base": 0.4, "tuned": 0.7}, "reward": {"base": 0.5, "tuned": 0.6}},
        "difference": {"mean": 0.1, "ci_low": 0.02, "ci_high": 0.18, "pairs": 4},
        "win_tie_loss": {"wins": 3, "ties": 0, "losses": 1, "tie_tolerance": 0.0, "win_rate": 0.75,
                         "ci_low": 0.3, "ci_high": 0.95},
    }
    text = format_results(results)
    assert "size" in text and "base 0.4000   tuned 0.7000" in text
    assert "3 wins, 0 ties" in text and "75.0 %" in text
    assert "tuned - base +0.1000 (95 % CI +0.0200 to +0.1800, paired)" in text
