"""The Anthropic Messages API: request/response shapes, translation to and from the chat
pipeline, and the event stream (the routes: facade/routes/messages.py)."""
