"""Prompt transitions: the text conditioning of a frame, moving from where the picture was to where the prompt
now says over `transition_s` seconds, and the live blend of two prompts (`prompt_b`, `prompt_mix`).

Both ends come from the prompt cache, so a transition costs one interpolation of the embeddings per frame and no
text-encoder call. A change made mid-transition starts the next one from the embeddings shown at that moment.
"""

from __future__ import annotations

from dataclasses import dataclass

from .conditioning import PromptEmbeds


def blend(a: PromptEmbeds, b: PromptEmbeds, weight: float) -> PromptEmbeds:
    """(1 - weight) a + weight b, hidden states and SDXL's pooled projection alike; `a` itself at weight 0."""
    if weight <= 0.0:
        return a
    if weight >= 1.0:
        return b
    pooled = None if a.pooled is None or b.pooled is None else a.pooled.lerp(b.pooled, weight)
    return PromptEmbeds(a.hidden.lerp(b.hidden, weight), pooled)


@dataclass(frozen=True)
class PromptTransition:
    """From `start` (None: no transition) to `target`, over `seconds` from clock time `started`."""

    target: PromptEmbeds
    start: PromptEmbeds | None = None
    started: float = 0.0
    seconds: float = 0.0

    def progress(self, now: float) -> float:
        """0 at the start, 1 once the target is reached (at once when there is no transition)."""
        if self.start is None or self.seconds <= 0:
            return 1.0
        return min(max((now - self.started) / self.seconds, 0.0), 1.0)

    def at(self, progress: float) -> PromptEmbeds:
        return self.target if self.start is None else blend(self.start, self.target, progress)

    def towards(self, target: PromptEmbeds, now: float, seconds: float) -> PromptTransition:
        """A transition to `target` that starts from what is shown now (a cut when `seconds` is 0)."""
        if seconds <= 0:
            return PromptTransition(target)
        return PromptTransition(target, self.at(self.progress(now)), now, seconds)
