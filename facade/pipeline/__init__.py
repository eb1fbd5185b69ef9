"""The generation pipeline: the chat and completions runs the routes and the Responses API share.

Owns a request's way through the core's `Generate` once its route has checked it: opening the
calls (through facade/generation.py, which owns admission, merging and cancellation), the run
state (facade/pipeline/run.py: per-choice accumulation, tool-call assembly, usage), and turning
the core's responses into OpenAI's SSE chunks or into one aggregated answer
(facade/pipeline/chat.py, facade/pipeline/completions.py). The pure request → proto and
proto → OpenAI translation it calls is facade/convert.py.

It sits below the HTTP layer: nothing here imports `facade.routes` or `facade.responses`; the
routes (facade/routes/) and the Responses translation (facade/responses/) import from here.
"""

from facade.pipeline.chat import ChatRun, chunk_choice, complete_chat, open_chat, stream_chat
from facade.pipeline.completions import (
    CompletionRun,
    complete_completion,
    open_completion,
    stream_completion,
)
from facade.pipeline.run import ChoiceState, GenerationRun, UsageTotal

__all__ = [
    "ChatRun",
    "ChoiceState",
    "CompletionRun",
    "GenerationRun",
    "UsageTotal",
    "chunk_choice",
    "complete_chat",
    "complete_completion",
    "open_chat",
    "open_completion",
    "stream_chat",
    "stream_completion",
]
