"""Model loading (any Hugging Face causal LM, `loading.py`), the built-in tiny model's
spec, tokenizer, architecture and cache folder (`builtin.py`), GGUF conversion.

Names such as "builtin" become folders above this package, in the trainer
(`trainer/resolve.py`): building the built-in model trains it.
"""
