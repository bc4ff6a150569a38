"""Evaluation: perplexity and bits per byte, MMLU, HumanEval, and the sandbox that runs model-written code."""
