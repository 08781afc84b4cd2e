"""Attaching to Hugging Face language models: layer tables and hook-based injection."""
