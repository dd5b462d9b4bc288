"""The Python API end to end on the embedded demo (CPU, about a minute with the defaults):
train Diffusion-DPO with LoRA for a few steps, evaluate the run against its base, score images.

    python examples/python_api.py [OUT] [--steps N]

OUT defaults to out/python-api; the run lands in OUT/run and its evaluation in OUT/run/eval.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

import diffalign


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Train, evaluate and score; returns what each step gave (for the test that runs this example)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="out/python-api", help="output folder")
    parser.add_argument("--steps", type=int, default=30, help="training steps (default: 30)")
    parser.add_argument("--sampling-steps", type=int, default=10, help="sampling steps of the eval (default: 10)")
    args = parser.parse_args(argv)
    out = Path(args.out)

    # The embedded demo config with two settings changed: `train__max_steps` is `train.max_steps` on the CLI.
    config = diffalign.load_config(train__max_steps=args.steps, train__output_dir=out / "run", train__log_every=1)
    run = diffalign.train(config, train__trackers=[])
    print(f"trained {run.folder}: loss {run.metrics['loss']:.4f} after step {run.metrics['step']:.0f}")

    prompts = out / "prompts.txt"
    prompts.write_text("a red circle on a blue background\na small green square on a white background\n")
    result = diffalign.evaluate(run.folder, prompts=prompts, seeds=2, steps=args.sampling_steps, progress=False)
    wins = result.results["comparisons"]["shapes"]["tuned"]
    print(f"tuned vs base: {wins['wins']} wins, {wins['ties']} ties, {wins['losses']} losses ({result.folder})")

    images = sorted((result.folder / "images" / "tuned").glob("*.png"))[:2]
    scores = diffalign.score([Image.open(path) for path in images],
                             ["a red circle on a blue background"] * len(images), scorer="shapes")
    print("shapes scores:", ", ".join(f"{value:.3f}" for value in scores))
    return {"run": run, "eval": result, "scores": scores}


if __name__ == "__main__":
    main()
