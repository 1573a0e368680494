"""The offline toy world: synthetic skills, a locally trained tokenizer and a small Qwen2 base model θ0."""
