"""gpupool end-to-end harness: a local Kubernetes control plane with kwok fake GPU nodes."""
