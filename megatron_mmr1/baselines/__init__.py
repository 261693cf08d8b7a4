"""Yardsticks the trainer is measured against: code that deliberately shares none of the trainer's
training path (a plain single-process PyTorch loop on Hugging Face's model)."""
