"""The network and what trains it: UNet3D and its blocks, the losses, the learning-rate schedule, checkpoints."""
