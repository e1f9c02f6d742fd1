"""Training: the Trainer (one mixed-precision step), its settings per device, the loop with named hooks, resume, distributed."""
