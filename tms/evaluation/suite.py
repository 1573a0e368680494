"""Evaluate one model on a suite: target, other targets (transfer), retention, and the paper's diagnostics.

``evaluate_model`` returns the *absolute* numbers of one model:

* ``scores[b]``: mean verifier score of greedy completions on benchmark b's test split;
* ``pass_at_k``, ``sc_acc``, ``answer_entropy``: from ``sampling.n`` samples per target prompt
  (unbiased pass@k; majority-vote accuracy; entropy in nats of the extracted answers);
* ``kl_to_base[group]``: the reverse KL(π_θ ‖ π_0) from ``kl.n`` samples y ~ π_θ per prompt at
  temperature 1 scored under both models (``kl_seq``, ``kl_seq_per_prompt``, ``kl_token``;
  ``kl.estimator`` k1 or k3), on the target and on the retention prompts (the quantity of the TMS
  paper's Theorem 6.1);
* ``kl_from_base[group]``: the forward KL(π_0 ‖ π_θ), the same keys, prompts, ``kl.n``, estimator and
  seed, from samples y ~ π_0 (θ0) instead (the predictor of forgetting of Shenfeld et al. 2025,
  "RL's Razor"); both directions come from one function, :func:`sample_kl`, with the roles swapped;
* ``pld``: held-out NLL of the training task's validation references (eq. 4.2).

``relative_metrics`` adds what needs θ0's results: ``xfer`` (S_xfer), ``retention``, ``deltas``
and ``forgetting`` (F, eq. 3.2).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import torch

from tms.data.formatting import completion_ids, prompt_ids
from tms.data.tasks.base import Task
from tms.evaluation import metrics as M
from tms.generation.base import SamplingParams
from tms.generation.hf import HFGenerator
from tms.generation.scoring import score_completions
from tms.models.loading import load_model

log = logging.getLogger(__name__)


_SHARED: dict[str, Any] = {}


def shared(cls: str, **kwargs: Any) -> Any:
    """One instance of class ``cls`` (dotted path) per set of arguments in this process.

    A Hydra ``_target_`` for objects several benchmarks use, e.g. one judge model for WildGuardTest and
    WildJailbreak (``{_target_: tms.evaluation.suite.shared, cls: ...ModelJudge, model_path: ...}``).
    """
    import json

    from hydra.utils import get_class

    key = json.dumps([cls, kwargs], sort_keys=True, default=str)
    if key not in _SHARED:
        _SHARED[key] = get_class(cls)(**kwargs)
    return _SHARED[key]


def _prompts(tok, task: Task, examples) -> list[list[int]]:
    return [prompt_ids(tok, task.messages(e)) for e in examples]


def greedy_scores(gen: HFGenerator, task: Task, examples, max_new_tokens: int, seed: int, keep: int = 3):
    """Mean verifier score of greedy completions, and a few samples for inspection."""
    comps = gen.generate(_prompts(gen.tokenizer, task, examples), 1, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens), seed)
    scores = task.score([c.text for c in comps], [e.answer for e in examples])
    samples = [{"prompt": e.prompt, "completion": c.text, "score": s} for e, c, s in zip(examples[:keep], comps, scores)]
    return sum(scores) / max(len(scores), 1), samples


def sampling_metrics(gen: HFGenerator, task: Task, examples, n: int, ks, temperature: float, top_p: float,
                     max_new_tokens: int, seed: int) -> dict[str, Any]:
    """Pass@k (unbiased), SC-Acc and answer entropy from n samples per prompt."""
    sp = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    comps = gen.generate(_prompts(gen.tokenizer, task, examples), n, sp, seed)
    scores = task.score([c.text for c in comps], [examples[c.prompt_index].answer for c in comps])
    correct = [scores[i * n:(i + 1) * n] for i in range(len(examples))]
    answers = [[task.extract_answer(c.text) for c in comps[i * n:(i + 1) * n]] for i in range(len(examples))]
    ks = [int(k) for k in ks if int(k) <= n]
    return {
        "pass_at_k": {str(k): v for k, v in M.mean_pass_at_k(correct, ks).items()},
        "sc_acc": M.sc_accuracy(answers, correct),
        "answer_entropy": M.mean_answer_entropy(answers),
        "n": n, "temperature": temperature,
    }


def kl_samples(gen: HFGenerator, task_examples: list[tuple[Task, list]], n: int, max_new_tokens: int, seed: int):
    """``(prompts, completions)``: n samples y ~ π_θ(·|x) per prompt x at temperature 1, top-p 1.

    Each completion carries its token log-probs under π_θ (``logprobs``) and ``prompt_index``.
    Deterministic for a given (model, prompts, n, seed, batch size): see :class:`HFGenerator`.
    """
    prompts = [p for task, exs in task_examples for p in _prompts(gen.tokenizer, task, exs)]
    sp = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens, logprobs=True)
    return prompts, gen.generate(prompts, n, sp, seed)


def sample_kl(sampler: HFGenerator, other_model, task_examples: list[tuple[Task, list]], max_new_tokens: int,
              seed: int, n: int = 1, estimator: str = "k1") -> dict[str, float]:
    r"""KL(π_s ‖ π_o) on the prompts of ``task_examples``, from n samples per prompt of the *sampling* model.

    π_s = ``sampler.model`` (it draws the samples and scores them), π_o = ``other_model`` (it only scores
    them). With samples :math:`y_{x,s} \sim \pi_s(\cdot|x)` at temperature 1 (:func:`kl_samples`) and the
    k1 estimator

    .. math::  \widehat{\mathrm{KL}}(y) = \sum_i \log\pi_s(y_i|x,y_{<i}) - \log\pi_o(y_i|x,y_{<i}),
               \quad \texttt{kl\_seq\_per\_prompt} = \frac{1}{P}\sum_x \frac{1}{n}\sum_s \widehat{\mathrm{KL}}(y_{x,s})

    also ``kl_seq`` (mean over samples; equal to the per-prompt mean since every prompt has n samples)
    and ``kl_token`` (summed KL over all sampled tokens / their number); see :func:`metrics.kl_to_base`,
    whose "policy" is the sampling model π_s and "base" the other one π_o (``estimator="k3"``:
    :math:`(r-1) - \log r` with :math:`r = \pi_o/\pi_s` per token, unbiased for the same KL). π_o scores
    with the sampler's batch size, like π_s's own log-probs, so a model against itself gives exactly 0.
    Both models must share the sampler's tokenizer.
    """
    prompts, comps = kl_samples(sampler, task_examples, n, max_new_tokens, seed)
    other_lp = score_completions(other_model, [prompts[c.prompt_index] for c in comps], [c.token_ids for c in comps],
                                 sampler.tokenizer.pad_token_id, batch_size=sampler.batch_size,
                                 logprob_chunk=sampler.logprob_chunk)
    return M.kl_to_base([torch.tensor(c.logprobs) for c in comps], [torch.tensor(b) for b in other_lp],
                        prompt_ids=[c.prompt_index for c in comps], estimator=estimator)


def kl_to_base(gen: HFGenerator, base_model, task_examples: list[tuple[Task, list]], max_new_tokens: int,
               seed: int, n: int = 1, estimator: str = "k1") -> dict[str, float]:
    r"""Reverse KL(π_θ ‖ π_0) (App. F.5): :func:`sample_kl` with samples y ~ π_θ (``gen``), scored under π_0.

    .. math::  \widehat{\mathrm{KL}}(y) = \sum_i \log\pi_\theta(y_i|x,y_{<i}) - \log\pi_0(y_i|x,y_{<i}),
               \quad y \sim \pi_\theta(\cdot|x)
    """
    return sample_kl(gen, base_model, task_examples, max_new_tokens, seed, n=n, estimator=estimator)


def kl_from_base(gen: HFGenerator, base_model, task_examples: list[tuple[Task, list]], max_new_tokens: int,
                 seed: int, n: int = 1, estimator: str = "k1") -> dict[str, float]:
    r"""Forward KL(π_0 ‖ π_θ): :func:`sample_kl` with samples y ~ π_0 (``base_model``), scored under π_θ (``gen``).

    .. math::  \widehat{\mathrm{KL}}(y) = \sum_i \log\pi_0(y_i|x,y_{<i}) - \log\pi_\theta(y_i|x,y_{<i}),
               \quad y \sim \pi_0(\cdot|x)

    The arguments are those of :func:`kl_to_base` (same prompts, n, seed and estimator, so the two
    directions are comparable). θ0 samples with ``gen``'s tokenizer and batch size, so its samples are a
    deterministic function of (θ0, prompts, n, seed, batch size), whatever π_θ is.
    """
    sampler = HFGenerator(base_model, gen.tokenizer, batch_size=gen.batch_size, logprob_chunk=gen.logprob_chunk)
    return sample_kl(sampler, gen.model, task_examples, max_new_tokens, seed, n=n, estimator=estimator)


def completion_nll(model, tok, task: Task, examples, completions: list[str],
                   batch_size: int = 32, chunk: int | None = None) -> dict[str, float]:
    r"""Per-sequence and per-token NLL of the texts ``completions[j]`` given the prompts of ``examples[j]``.

    Each target is tokenised as in training (:func:`completion_ids`: the text, then eos) after the chat
    prompt :func:`prompt_ids` of ``task.messages(example)``; with :math:`\mathrm{NLL}_j = -\sum_i
    \log\pi(y_{j,i}|x_j,y_{j,<i})` and :math:`T_j` its token count, ``pld`` :math:`= \frac{1}{N}\sum_j
    \mathrm{NLL}_j` (:func:`metrics.pld`), ``nll_token`` :math:`= \sum_j \mathrm{NLL}_j / \sum_j T_j` and
    ``n`` = N.
    """
    if len(examples) != len(completions):
        raise ValueError(f"completion_nll: {len(examples)} examples but {len(completions)} completions")
    prompts = _prompts(tok, task, examples)
    targets = [completion_ids(tok, text) for text in completions]
    lps = score_completions(model, prompts, targets, tok.pad_token_id, batch_size=batch_size, logprob_chunk=chunk)
    nll = [-sum(lp) for lp in lps]
    return {"pld": M.pld(nll), "nll_token": M.pld_per_token([(v, len(lp)) for v, lp in zip(nll, lps)]),
            "n": len(examples)}


def reference_nll(model, tok, task: Task, examples, chunk: int | None = None) -> dict[str, float]:
    """Held-out PLD: per-sequence and per-token NLL of the references (eq. 4.2), via :func:`completion_nll`."""
    return completion_nll(model, tok, task, examples, [e.reference for e in examples], chunk=chunk)


def evaluate_model(model_path: str, suite: Mapping[str, Any], tasks: Mapping[str, Task], base_path: str | None,
                   pld_task: Task | None, model_kwargs: Mapping[str, Any], seed: int,
                   logprob_chunk: int | None = None, engine: Callable[[], Any] | None = None,
                   keep_samples: int = 3) -> dict[str, Any]:
    """Absolute metrics of the model at ``model_path`` (see the module docstring). ``logprob_chunk``: every
    teacher-forced score (KL, PLD) through the memory-bounded LM-head path (:mod:`tms.objectives.head_logprobs`).

    ``engine``: a factory of the generator for the greedy scores and the Pass@k / SC-Acc / entropy samples (the
    ``eval.backend``, e.g. vLLM in its own process), closed before the HF model is loaded for the KL estimates and
    the PLD, which are teacher-forced log-probs of one model against another and stay on HF (a model against itself
    then gives exactly 0); None: the HF model does everything. ``keep_samples``: greedy completions kept per
    benchmark in ``samples`` (inspection, the W&B table)."""
    hf = lambda: HFGenerator.from_pretrained(model_path, batch_size=int(suite.get("batch_size", 64)),  # noqa: E731
                                             dtype=model_kwargs.get("dtype", "auto"),
                                             trust_remote_code=bool(model_kwargs.get("trust_remote_code", False)),
                                             logprob_chunk=logprob_chunk)
    limit, max_new = suite.get("limit"), int(suite["max_new_tokens"])
    split = suite.get("split", "test")
    examples = {name: task.examples(split, limit) for name, task in tasks.items()}
    out: dict[str, Any] = {"scores": {}, "samples": {}}
    sampler = engine() if engine is not None else hf()
    try:
        for name, task in tasks.items():
            out["scores"][name], out["samples"][name] = greedy_scores(sampler, task, examples[name], max_new, seed,
                                                                      keep=keep_samples)
            log.info("eval %s: %s = %.3f", model_path, name, out["scores"][name])
        target = suite["target"]
        out["target"] = out["scores"][target]
        s = suite["sampling"]
        out.update(sampling_metrics(sampler, tasks[target], examples[target][: s.get("limit")], int(s["n"]), s["ks"],
                                    float(s["temperature"]), float(s.get("top_p", 1.0)), max_new, seed))
    finally:
        if engine is not None:
            sampler.close()  # its GPU memory is free before the HF model below is loaded
    gen = sampler if engine is None else hf()
    directions = {"kl_to_base": kl_to_base, "kl_from_base": kl_from_base}
    out.update({key: {} for key in directions})
    kl = suite["kl"]
    groups = {"target": [target], "retention": list(suite.get("retention") or [])}
    same_as_base = base_path is None or str(base_path) == str(model_path)
    base_model = None if same_as_base else load_model(base_path, **model_kwargs).to(next(gen.model.parameters()).device)
    for group, names in groups.items():
        if not names:
            continue
        pairs = [(tasks[n], examples[n][: kl.get("limit")]) for n in names]
        for key, direction in directions.items():
            if same_as_base:  # KL(π_0 ‖ π_0) = 0 exactly, in both directions
                out[key][group] = {"kl_seq": 0.0, "kl_token": 0.0, "kl_seq_per_prompt": 0.0}
                continue
            out[key][group] = direction(gen, base_model, pairs, max_new, seed, n=int(kl.get("n", 1)),
                                        estimator=str(kl.get("estimator", "k1")))
    if pld_task is not None:
        out["pld"] = reference_nll(gen.model, gen.tokenizer, pld_task, pld_task.examples("val", suite.get("pld_limit")),
                                   chunk=gen.logprob_chunk)
    gen.close()
    return out


def relative_metrics(result: Mapping[str, Any], base: Mapping[str, Any], suite: Mapping[str, Any]) -> dict[str, Any]:
    """Δ against θ0: S_xfer over the other targets, retention scores and F (eq. 3.2)."""
    scores, base_scores = result["scores"], base["scores"]
    retention = list(suite.get("retention") or [])
    others = [b for b in (suite.get("other_targets") or []) if b != suite["target"]]
    return {
        "deltas": M.deltas(scores, base_scores),
        "xfer": M.cross_task_transfer(scores, base_scores, others),
        "retention": {b: scores[b] for b in retention},
        "forgetting": M.forgetting_score(scores, base_scores, retention) if retention else None,
    }
