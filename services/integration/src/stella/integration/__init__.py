"""Stella integration service."""
