"""Model loading (any Hugging Face causal LM) and the built-in tiny model."""
