"""The logged means: each key over the micro-steps that reported it, pooled over every process's sums and counts,
so a process that saw none of a key (D3PO's batch without a scorable pair) still takes part in the collective."""

from __future__ import annotations

import torch

from diffalign.training.step_log import pooled_means


class _OneProcess:
    num_processes, device = 1, torch.device("cpu")


def test_a_key_is_averaged_over_the_micro_steps_that_reported_it():
    assert pooled_means({"loss": 3.0, "ties": 0.5}, {"loss": 3, "ties": 1}, _OneProcess()) == {"loss": 1.0,
                                                                                              "ties": 0.5}


def test_every_process_keys_are_pooled_by_sums_and_counts(monkeypatch):
    other = {"loss": (3.0, 1), "ties": (1.0, 2)}  # the second process's sums and counts

    class TwoProcesses:
        num_processes, device = 2, torch.device("cpu")

        def reduce(self, tensor, reduction):
            assert reduction == "sum"
            theirs = [[other.get(k, (0.0, 0))[0], float(other.get(k, (0.0, 0))[1])] for k in ("loss", "ties")]
            return tensor + torch.tensor(theirs, dtype=tensor.dtype)

    monkeypatch.setattr("accelerate.utils.gather_object", lambda mine: mine + [sorted(other)])
    # this process saw only "loss" (one micro-step); the keys of both take part, in the same order everywhere
    assert pooled_means({"loss": 1.0}, {"loss": 1}, TwoProcesses()) == {"loss": 2.0, "ties": 0.5}
