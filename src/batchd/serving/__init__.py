"""Serving: one request of an OpenAI endpoint through an engine into that endpoint's answer,
whole or streamed; the same for a real-time call and for a line of a batch. One module per
endpoint, and `endpoints.py` for the table and the model lookup they share."""
