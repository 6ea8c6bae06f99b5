"""The answer LLM: prompts, generation, continuous batching, training data, collators and checkpoints."""
