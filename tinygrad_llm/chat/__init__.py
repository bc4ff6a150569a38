"""From base model to assistant: the chat format, fine-tuning data, supervised fine-tuning, LoRA, the chat REPL."""
