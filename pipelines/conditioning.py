"""Text conditioning for both model families, exactly as diffusers' pipelines compute it, and SDXL's size ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .components import ModelComponents


@dataclass(frozen=True)
class PromptEmbeds:
    """CLIP hidden states (B x 77 x D) and, for SDXL, the pooled projection of text encoder 2 (B x P)."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def zeros_like(self) -> PromptEmbeds:
        """SDXL's unconditional embedding when no negative prompt is given (force_zeros_for_empty_prompt)."""
        pooled = None if self.pooled is None else torch.zeros_like(self.pooled)
        return PromptEmbeds(torch.zeros_like(self.hidden), pooled)

    @staticmethod
    def cat(embeds: Sequence[PromptEmbeds]) -> PromptEmbeds:
        """Several frames' embeddings along the batch, in order (under classifier-free guidance the negatives first,
        as diffusers batches them)."""
        if len(embeds) == 1:
            return embeds[0]
        pooled = [e.pooled for e in embeds if e.pooled is not None]  # all or none: a batch has one model
        return PromptEmbeds(torch.cat([e.hidden for e in embeds]), torch.cat(pooled) if pooled else None)


@torch.inference_mode()
def encode_prompt(components: ModelComponents, prompt: str) -> PromptEmbeds:
    """What diffusers' `encode_prompt` returns for one prompt (no clip skip, no LoRA scale)."""
    c = components
    if not c.is_sdxl:
        tokens = _tokens(c.tokenizer, prompt)
        attention_mask = None
        if getattr(c.text_encoder.config, "use_attention_mask", False):
            attention_mask = tokens.attention_mask.to(c.device)
        hidden = c.text_encoder(tokens.input_ids.to(c.device), attention_mask=attention_mask)[0]
        return PromptEmbeds(hidden.to(dtype=c.dtype))
    # SDXL: the penultimate hidden states of both encoders side by side; pooled from the one with projection.
    assert c.tokenizer_2 is not None and c.text_encoder_2 is not None  # what is_sdxl means
    hidden_states, pooled = [], None
    for tokenizer, encoder in ((c.tokenizer, c.text_encoder), (c.tokenizer_2, c.text_encoder_2)):
        output = encoder(_tokens(tokenizer, prompt).input_ids.to(c.device), output_hidden_states=True)
        if pooled is None and output[0].ndim == 2:
            pooled = output[0]
        hidden_states.append(output.hidden_states[-2])
    assert pooled is not None, "SDXL's second text encoder projects the pooled output"
    return PromptEmbeds(torch.concat(hidden_states, dim=-1).to(dtype=c.dtype), pooled.to(dtype=c.dtype))


def _tokens(tokenizer, prompt: str):
    return tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )


def sdxl_time_ids(width: int, height: int, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop corner (0, 0) and target size, all the processing size."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype)
    return ids.to(device).repeat(batch, 1)
