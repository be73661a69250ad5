"""An LRU cache of prompt embeddings, so the text encoder runs once per distinct prompt, never per frame."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .components import ModelComponents
from .conditioning import PromptEmbeds, encode_prompt


class PromptCache:
    """Maps (model, prompt) to its embeddings; thread-safe, bounded to `capacity` prompts."""

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], PromptEmbeds] = OrderedDict()
        self._lock = threading.Lock()
        self.encoder_calls = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, components: ModelComponents, prompt: str) -> PromptEmbeds:
        """The embeddings of `prompt` on the model's device and dtype, encoding it on a miss."""
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
