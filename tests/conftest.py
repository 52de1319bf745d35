"""Test setup: without CUDA the kernel runs in Triton's interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton compiles anything, so it is set here, at
collection, before any test module imports the kernel.
"""
import functools
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _speed_up_the_interpreter():
    """Two shortcuts through Triton's interpreter that change no result: together they
    cut the interpreted kernel's time by 40% (the min-p G-test of tests/test_kernel.py:
    81 s to 47 s).  Versions of Triton without these internals run unchanged.

    - It patches ``triton.language`` again on every call of a library ``@jit`` function
      (``tl.sum``, ``tl.max``, ``tl.zeros``, ...: about a hundred per row of the kernel,
      3 ms each), though the launch has patched it already and nothing restores it before
      the launch ends: the repeats within one launch are skipped (the first call from
      each module still patches).
    - Every operation maps its dtype to numpy's by building a 19-entry dict keyed on
      dtypes (whose hash formats a string): the answers are cached (a block maps as its
      element does).
    """
    try:
        from triton.runtime import interpreter
        patch_lang, launch = interpreter._patch_lang, interpreter.GridExecutor.__call__
        new_scope, np_dtype = interpreter._LangPatchScope, interpreter._get_np_dtype
        block_type = interpreter.tl.block_type
    except (ImportError, AttributeError):
        return
    if getattr(interpreter, "_fused_sampler_shortcuts", False):
        return
    interpreter._fused_sampler_shortcuts = True
    patched = set()

    def patch_lang_once(fn):
        key = id(fn.__globals__)
        if key in patched:
            return new_scope()              # nothing set, nothing to restore
        patched.add(key)
        return patch_lang(fn)

    def launch_with_fresh_patches(self, *args, **kwargs):
        patched.clear()
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched.clear()

    interpreter._patch_lang = patch_lang_once
    interpreter.GridExecutor.__call__ = launch_with_fresh_patches
    np_dtype_of_element = functools.lru_cache(maxsize=None)(np_dtype)

    def np_dtype_cached(tt_dtype):
        if isinstance(tt_dtype, block_type):
            tt_dtype = tt_dtype.element_ty
        try:
            return np_dtype_of_element(tt_dtype)
        except TypeError:                       # an unhashable dtype
            return np_dtype(tt_dtype)

    interpreter._get_np_dtype = np_dtype_cached


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    _speed_up_the_interpreter()


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
