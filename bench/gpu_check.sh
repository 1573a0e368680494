#!/usr/bin/env bash
# The paper-scale device check (issue #15): one command, <= 8 minutes on one H100/H200, nothing to download.
# SFT steps in bf16 on one GPU and under FSDP (one process) with tokens/s and MFU, the HF harvest's completions/s,
# one GRPO step with the memory-bounded log-probs against the full logits (peak memory). See bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python bench/gpu_check.py "$@"
