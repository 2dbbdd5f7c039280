"""`python -m training --out DIR`: train the default model on the world (see training.recipe)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.recipe import TrainingPlan, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory for the diffusers layout")
    parser.add_argument("--work", type=Path, help="stage checkpoints (default: OUT.work); a rerun resumes")
    parser.add_argument("--quick", action="store_true", help="a few steps of every stage (a smoke test)")
    parser.add_argument("--reuse", type=Path, help="a model of this recipe: keep its text encoder and VAE")
    args = parser.parse_args()
    plan = TrainingPlan.quick() if args.quick else TrainingPlan()
    print(json.dumps(train(args.out, args.work or args.out.with_suffix(".work"), plan, args.reuse), indent=2))


if __name__ == "__main__":
    main()
