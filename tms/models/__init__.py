"""Models: loading (HF), distributed strategies (FSDP / DDP), and θ0 from a packaged GGUF file."""
