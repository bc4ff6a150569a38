"""Models in other programs' formats: reading a Hugging Face GPT-2 directory (export and int8 come later)."""
