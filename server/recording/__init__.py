"""Recordings of a stream: its camera and sound as they came, its picture and sound as they left, and its events."""

from .recorder import Recording, RecordingError, folder_name

__all__ = ["Recording", "RecordingError", "folder_name"]
