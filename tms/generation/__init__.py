"""Generation backends behind one interface (:class:`tms.generation.base.Generator`)."""
from tms.generation.base import Completion, Generator, SamplingParams

__all__ = ["Completion", "Generator", "SamplingParams"]
