"""Triton kernels of fused_sampler (installed as ``fused_sampler.kernels``)."""
