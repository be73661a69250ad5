"""`lcmlive render`: a recording's every input frame run again through the stream pipeline, into an MP4 master."""

from .command import RenderSummary, load_recorded_model, render
from .folder import Recording, RecordingError, read_recording

__all__ = ["Recording", "RecordingError", "RenderSummary", "load_recorded_model", "read_recording", "render"]
