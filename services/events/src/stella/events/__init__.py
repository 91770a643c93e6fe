"""Stella public events: the projection of internal events onto the public stream, and webhooks."""
