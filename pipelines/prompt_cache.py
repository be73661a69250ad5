"""An LRU cache of prompt embeddings, so the text encoder runs once per distinct prompt, never per frame."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from .components import ModelComponents


class PromptCache:
    """Maps (model, prompt) to its CLIP hidden states; thread-safe, bounded to `capacity` prompts."""

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.encoder_calls = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, components: ModelComponents, prompt: str) -> torch.Tensor:
        """The embeddings of `prompt` (1 x 77 x D, on the model's device and dtype), encoding it on a miss."""
        key = (components.model_id, prompt)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                return cached
        embeddings = encode_prompt(components, prompt)
        with self._lock:
            self.encoder_calls += 1
            self._entries[key] = embeddings
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return embeddings


@torch.inference_mode()
def encode_prompt(components: ModelComponents, prompt: str) -> torch.Tensor:
    """CLIP last hidden state for `prompt`, tokenised exactly as diffusers' `encode_prompt` does (no clip skip)."""
    tokenizer = components.tokenizer
    tokens = tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    encoder = components.text_encoder
    attention_mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        attention_mask = tokens.attention_mask.to(components.device)
    hidden = encoder(tokens.input_ids.to(components.device), attention_mask=attention_mask)[0]
    return hidden.to(dtype=components.dtype)
