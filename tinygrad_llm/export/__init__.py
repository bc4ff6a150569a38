"""Models in other programs' formats: Hugging Face directories read and written (int8 weights next)."""
