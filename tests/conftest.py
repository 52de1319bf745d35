"""Test setup: without CUDA the kernel runs in Triton's interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton compiles anything, so it is set here, at
collection, before any test module imports the kernel.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device():
    return DEVICE


def pytest_collection_modifyitems(config, items):
    cuda = torch.cuda.is_available()
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    no_interpreter = pytest.mark.skip(
        reason="runs the kernel on CPU tensors: needs TRITON_INTERPRET=1 (on a GPU machine, "
               "run with CUDA_VISIBLE_DEVICES= to get it)")
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(no_gpu)
        if "interpreter" in item.keywords and not interpreted:
            item.add_marker(no_interpreter)
