"""A tokenizer trained locally on the toy corpus, saved as an ordinary Hugging Face tokenizer.

Byte-level BPE with exactly Qwen2's pre-tokenization (its split regex, which isolates every digit,
then GPT-2 byte-level mapping), so the saved tokenizer loads through ``AutoTokenizer`` as a
``Qwen2Tokenizer`` — the same class and code path as ``Qwen/Qwen2.5-3B-Instruct``. Special tokens
for padding, end of turn and the chat roles, and a Jinja chat template::

    <|system|>{system}<|user|>{user}<|assistant|>{assistant}<|end|>

``<|end|>`` is the eos token, so generation stops at the end of the assistant turn exactly as
``<|im_end|>`` does for Qwen2.5-Instruct.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

PAD, EOS, UNK = "<pad>", "<|end|>", "<unk>"
ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
#: Qwen2's pre-tokenizer split pattern (transformers ``Qwen2Tokenizer``); ``\p{N}`` splits digits.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "<|{{ m['role'] }}|>{{ m['content'] }}{% if m['role'] == 'assistant' %}<|end|>{% endif %}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 384):
    """Train the BPE tokenizer on ``corpus`` and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, EOS, UNK, *ROLES]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLES),
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=256,
    )


def build_and_save(corpus: Iterable[str], out_dir: str | Path, vocab_size: int = 384):
    tok = train_tokenizer(corpus, vocab_size)
    tok.save_pretrained(str(out_dir))
    return tok
