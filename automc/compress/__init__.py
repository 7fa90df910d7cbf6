"""Compression: tasks (models, data, metrics, fine-tune loop), channel surgery, methods and schemes."""
