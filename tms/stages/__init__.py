"""The stages of the pipeline, one module each: θ0, Stage 1 SFT, harvest, student, RL, evaluation."""
