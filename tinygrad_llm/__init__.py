"""The LLM built on nn and tokenizer."""
