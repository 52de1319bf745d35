"""A tiny character-level Shakespeare model that shows fused_sampler on real text.

``main(argv)`` is the ``python -m fused_sampler generate`` command: it continues a prompt
with the bundled GRU (``charlm.pt``, trained by ``scripts/train_charlm.py`` on the
public-domain plays in ``shakespeare.txt``) under several sampling settings side by side,
every token drawn by :func:`fused_sampler.sample` through :func:`fused_sampler.generate`.
"""
from .cli import PRESETS, main
from .model import TEXT, WEIGHTS, CharLM, Vocab, load_model

__all__ = ["main", "load_model", "CharLM", "Vocab", "PRESETS", "WEIGHTS", "TEXT"]
