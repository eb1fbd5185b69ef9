"""The Responses API: request/response shapes, translation to and from the chat pipeline, the
event stream, and the response store (memory or Redis)."""
