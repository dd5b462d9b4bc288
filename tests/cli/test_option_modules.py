"""The modules that hold the commands' option dataclasses load no model library: the command line is built from
them before any command runs, and a usage error must not wait for torch."""

from __future__ import annotations

import subprocess
import sys

OPTION_MODULES = ("diffalign.evaluation.score_options", "diffalign.feedback.pairs_job",
                  "diffalign.feedback.caption_job", "diffalign.models.fuse_options", "diffalign.models.lora_export",
                  "diffalign.feedback.label_server", "diffalign.config.scorer_server")
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "datasets", "peft")


def test_the_option_modules_load_no_model_library():
    probe = (f"import sys, importlib; [importlib.import_module(m) for m in {OPTION_MODULES!r}]; "
             f"print(sorted({{n.split('.')[0] for n in sys.modules}} & set({HEAVY!r})))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
