"""Stella deployment service."""
