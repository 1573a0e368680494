"""LightningModules, one per method family: :mod:`sft` (SFT, TMS, Self-/Final-SFT) and :mod:`rl` (GRPO, REINFORCE)."""
