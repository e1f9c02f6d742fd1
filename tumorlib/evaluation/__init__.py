"""Scoring: Dice/HD95 metrics, evaluating a run on a split, the intensity-only baseline."""
