"""gpupool."""
