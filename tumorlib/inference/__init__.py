"""Sliding-window inference with flip TTA, the predictor of a trained run, BraTS label files for raw volumes."""
