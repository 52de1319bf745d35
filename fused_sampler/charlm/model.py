"""A tiny character-level GRU language model, shaped like a Hugging Face causal LM.

The model answers the same call :func:`fused_sampler.generate` makes on a transformers
model (``input_ids``, ``attention_mask``, ``past_key_values``, ``use_cache``; an output
with ``.logits`` and ``.past_key_values``), so the demo samples through the very loop the
library ships.  Its "cache" is the GRU hidden state: one step costs the same at any
position, which keeps a 200-character demo at a few milliseconds a character on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["CharLM", "CharLMOutput", "Vocab", "WEIGHTS", "TEXT", "load_model"]

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "charlm.pt"
TEXT = HERE / "shakespeare.txt"


class Vocab:
    """Characters <-> ids: id ``i`` is the ``i``-th character of ``chars``.

    Parameters
    ----------
    chars : str
        Every character the model knows, each once, in id order.
    """

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise ValueError("chars: every character must appear once")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        """The sorted set of characters of ``text``."""
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; a character outside the vocabulary is an error (ValueError)."""
        missing = sorted(set(text) - set(self.index))
        if missing:
            raise ValueError(f"text: characters not in the model's vocabulary: {missing}")
        return [self.index[c] for c in text]

    def decode(self, ids) -> str:
        """The text of a sequence of ids (a list or a 1-D tensor)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)


@dataclass
class CharLMOutput:
    """What a forward call returns, named as in transformers' ``CausalLMOutputWithPast``.

    Attributes
    ----------
    logits : torch.Tensor
        float32 ``[B, T, V]`` (or ``[B, 1, V]`` when ``logits_to_keep=1``).
    past_key_values : torch.Tensor or None
        The GRU state ``[layers, B, hidden]`` after the last input, when ``use_cache``.
    """
    logits: torch.Tensor
    past_key_values: torch.Tensor | None = None


class CharLM(nn.Module):
    """Embedding -> multi-layer GRU -> linear head over characters.

    Parameters
    ----------
    vocab_size : int
        Number of characters ``V``.
    embed : int
        Embedding width.
    hidden : int
        GRU hidden size.
    layers : int
        Number of stacked GRU layers.
    dropout : float
        Dropout between GRU layers (training only).
    """

    def __init__(self, vocab_size: int, embed: int = 64, hidden: int = 256, layers: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, embed=embed, hidden=hidden, layers=layers,
                           dropout=dropout)
        self.embed = nn.Embedding(vocab_size, embed)
        self.rnn = nn.GRU(embed, hidden, layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, vocab_size)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                past_key_values: torch.Tensor | None = None, use_cache: bool = True,
                logits_to_keep: int = 0, **unused) -> CharLMOutput:
        """Logits for every position of ``input_ids``, continuing from ``past_key_values``.

        Parameters
        ----------
        input_ids : torch.Tensor
            int64 ``[B, T]`` character ids.
        attention_mask : torch.Tensor, optional
            ``[B, past + T]``; must be all ones: a recurrent state cannot skip padding,
            so prompts in one batch must have the same length.
        position_ids : torch.Tensor, optional
            Ignored (a GRU knows its position from its state); accepted for the
            transformers call signature.
        past_key_values : torch.Tensor, optional
            GRU state ``[layers, B, hidden]`` from the previous call; None starts fresh.
        use_cache : bool
            Return the new state as ``past_key_values``.
        logits_to_keep : int
            When > 0, only the last ``logits_to_keep`` positions get logits (as in
            transformers), which saves the head on a long prompt.

        Returns
        -------
        CharLMOutput
        """
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("attention_mask: CharLM cannot skip padding; give every prompt "
                             "in a batch the same length")
        out, state = self.rnn(self.embed(input_ids), past_key_values)
        if logits_to_keep > 0:
            out = out[:, -logits_to_keep:]
        return CharLMOutput(self.head(out), state if use_cache else None)


def load_model(path: str | Path = WEIGHTS, device: str | torch.device = "cpu"):
    """The committed model in eval mode, float32, and its vocabulary.

    Parameters
    ----------
    path : str or Path
        A file written by ``scripts/train_charlm.py``: a dict with ``config``, ``chars``
        and a (float16) ``state_dict``.
    device : str or torch.device
        Where to put the model.

    Returns
    -------
    (CharLM, Vocab)
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = CharLM(**blob["config"])
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return model.to(device).eval(), Vocab(blob["chars"])
