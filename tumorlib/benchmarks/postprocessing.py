"""What the post-processing chosen on validation does to the test split, over several runs (seeds).

For each run: ``tune_postprocessing`` chooses the rule on the validation split (written to
``RUN/postprocessing.json``, replacing an earlier choice), then the test volumes are predicted once and scored before and after it:
legacy Dice, BraTS 2023 lesion-wise Dice of WT, TC and ET, lesion-wise HD95 of WT, the predicted WT
components per case and the false-positive lesions per case of each region. The table gives each run and the
mean and spread (max - min) over the runs.

Run it as ``python -m tumorlib.benchmarks.postprocessing RUN [RUN ...]`` (the workspace's data and cache,
as ``tumorlib tune-postprocessing`` uses them).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tumorlib.core.brats import REGION_KEYS
from tumorlib.evaluation.lesions import lesion_scores
from tumorlib.evaluation.qc import count_lesions
from tumorlib.evaluation.tuning import LabelCase, label_cases, rule_scores, tune_postprocessing
from tumorlib.inference.postprocess import PostProcessing
from tumorlib.inference.run import Run

__all__ = ["benchmark_postprocessing", "case_counts"]


def case_counts(rule: PostProcessing, cases: Sequence[LabelCase]) -> dict[str, float]:
    """Means over ``cases`` after ``rule``: lesion-wise HD95 of WT, WT components and false-positive lesions."""
    rows = []
    for case in cases:
        labels = rule.apply(case.pred, case.spacing)
        found = lesion_scores(labels, case.ref, case.spacing)
        row = {"lesion_hd95_wt": found["lesion_hd95_wt"],
               "wt_components": count_lesions(labels > 0)}
        row.update({f"fp_{r}": found[f"lesions_fp_{r}"] for r in REGION_KEYS})
        rows.append(row)
    return {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}


def benchmark_postprocessing(runs: Sequence[str], device: Any = None, progress: bool = True) -> pd.DataFrame:
    """Tune each run on validation and score its test split without and with the rule.

    Args:
        runs: run folders (e.g. one per seed).
        device: None: CUDA when available, else CPU.
        progress: print each run's rule.

    Returns:
        One row per run and post-processing (``with`` False/True): ``run``, ``rule``, ``tune_seconds``, the
        ``rule_scores`` and ``case_counts`` of the test split.
    """
    rows = []
    for run_dir in runs:
        run = Run.open(run_dir, device)
        run.cache(progress=False)
        start = time.perf_counter()
        tune_postprocessing(run, progress=False, score_test=False)
        seconds = time.perf_counter() - start
        test = label_cases(run.model, run.config, run.cache_dir, run.split("test"), run.device, run.index, True)
        rule = run.postprocessing
        if progress:
            print(f"{run_dir}: {rule.describe()} (tuned in {seconds:.1f} s)", flush=True)
        for with_rule, applied in ((False, PostProcessing()), (True, rule)):
            rows.append({"run": str(run_dir), "with": with_rule, "rule": applied.describe(), "tune_seconds": seconds,
                         **rule_scores(applied, test), **case_counts(applied, test)})
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    runs = list(sys.argv[1:] if argv is None else argv)
    if not runs:
        print("usage: python -m tumorlib.benchmarks.postprocessing RUN [RUN ...]", file=sys.stderr)
        return 2
    table = benchmark_postprocessing(runs)
    columns = ["dice_wt", "dice_tc", "dice_et", "lesion_dice_wt", "lesion_dice_tc", "lesion_dice_et",
               "lesion_hd95_wt", "wt_components", "fp_wt", "fp_tc", "fp_et"]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table[["run", "with", *columns]].round(3).to_string(index=False))
        grouped = table.groupby("with")[columns]
        print("\nmean over runs\n" + grouped.mean().round(3).to_string())
        print("\nspread (max - min) over runs\n" + (grouped.max() - grouped.min()).round(3).to_string())
        print(f"\ntuning seconds per run (val prediction + grid): {table['tune_seconds'].round(1).unique().tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
