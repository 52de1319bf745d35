"""fused_sampler: one Triton kernel from logits to token ids.

Temperature, softmax, a sort-free exact top-k / top-p / min-p threshold search and the
multinomial draw in one launch.  ``fused_sampler.reference`` is the same contract in plain
PyTorch; ``fused_sampler.testing`` holds the checks that hold the kernel to it.
"""
from . import distributed, reference
from ._api import filtered_probs, sample
from .generate import GenerateOutput, StepTimer, generate

__all__ = ["sample", "filtered_probs", "reference", "distributed", "generate", "GenerateOutput",
           "StepTimer"]
__version__ = "0.1.0"
