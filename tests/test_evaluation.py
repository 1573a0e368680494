"""Evaluation: KL-to-base through the real suite functions, evaluate.py on the smoke world, reports, W&B."""
import csv
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import compose
from tms.evaluation import suite
from tms.evaluation.suite import relative_metrics
from tms.core.io import read_json, write_json

MAX_NEW = 12
RESULT_KEYS = ("scores", "target", "xfer", "retention", "forgetting", "deltas", "kl_to_base", "pld", "pass_at_k",
               "sc_acc", "answer_entropy", "samples", "rows", "suite", "model", "base_model", "seed")


def examples():
    """(task, prompts) pairs as kl_to_base takes them: 3 target and 2 retention prompts."""
    from tms.toy.tasks import ToyTask

    tasks = [ToyTask("sum", n_train=0, n_val=0, n_test=3, seed=0), ToyTask("add", n_train=0, n_val=0, n_test=2, seed=0)]
    return [(task, task.examples("test")) for task in tasks]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A randomly initialised tiny Qwen2 with the toy tokenizer (the smoke architecture), as θ0.

    Built here rather than pretrained (the smoke θ0 takes ~30 s): nothing below needs a competent model.
    """
    from omegaconf import OmegaConf

    from tms.models.loading import save_pretrained
    from tms.toy.tokenizer import build_and_save
    from tms.toy.world import init_model, tokenizer_corpus

    out = tmp_path_factory.mktemp("tiny_base") / "model"
    tok = build_and_save(tokenizer_corpus(0, n=40), out, vocab_size=384)
    arch = compose(["experiment=smoke"]).model.build.architecture
    save_pretrained(init_model(tok, OmegaConf.create(arch), seed=0), tok, out)
    return str(out)


@pytest.fixture(scope="module")
def stepped(tiny_base, tmp_path_factory):
    """θ0 after one AdamW step on the NLL of a few target references, saved as an HF directory."""
    from tms.data.formatting import collate_right_padded, completion_ids, prompt_ids
    from tms.objectives.nll import masked_nll
    from tms.models.loading import load_model, load_tokenizer, save_pretrained
    from tms.toy.tasks import ToyTask

    tok = load_tokenizer(tiny_base)
    model = load_model(tiny_base, dtype="float32")
    task = ToyTask("sum", n_train=8, n_val=0, n_test=0, seed=0)
    items = [(p + c, len(p)) for e in task.examples("train")
             for p, c in [(prompt_ids(tok, task.messages(e)), completion_ids(tok, e.reference))]]
    batch = collate_right_padded(items, tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss, _ = masked_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                         batch["labels"])
    loss.backward()
    opt.step()
    out = tmp_path_factory.mktemp("stepped") / "model"
    save_pretrained(model, tok, out)
    return str(out)


def generator(path):
    from tms.generation.hf import HFGenerator

    return HFGenerator.from_pretrained(path, batch_size=4, device="cpu")


def test_kl_to_base_is_exactly_zero_for_base_itself(tiny_base):
    from tms.models.loading import load_model

    gen = generator(tiny_base)
    res = suite.kl_to_base(gen, load_model(tiny_base, dtype="float32"), examples(), MAX_NEW, seed=0, n=2)
    assert res == {"kl_seq": 0.0, "kl_token": 0.0, "kl_seq_per_prompt": 0.0}


@torch.no_grad()
def test_kl_samples_are_drawn_from_the_unmodified_policy(tiny_base):
    """k1 is unbiased only for y ~ π_θ: no top-k / top-p / penalties may shape the samples.

    One prompt, 600 one-token samples of a near-uniform random model: the sampled tokens must cover far
    more than 50 tokens (transformers' default top_k=50) and their mean surprisal -log π_θ(y) must
    match the entropy H(π_θ(·|x)) of the full next-token distribution.
    """
    gen = generator(tiny_base)
    task, exs = examples()[0]
    prompts, comps = suite.kl_samples(gen, [(task, exs[:1])], 600, max_new_tokens=1, seed=0)
    logp = gen.model(input_ids=torch.tensor([prompts[0]])).logits[0, -1].float().log_softmax(-1)
    surprisal = torch.tensor([-c.logprobs[0] for c in comps])
    entropy = -(logp.exp() * logp).sum().item()
    assert len({c.token_ids[0] for c in comps}) > 100
    assert surprisal.mean().item() == pytest.approx(entropy, abs=4 * surprisal.std().item() / 600 ** 0.5)


@torch.no_grad()
def slow_token_logprobs(model, prompt, tokens):
    """log π(y_i | x, y_<i) one token at a time, each with a full forward pass over x + y_<i (no padding)."""
    out = []
    for i, tok in enumerate(tokens):
        ids = torch.tensor([list(prompt) + list(tokens[:i])])
        out.append(model(input_ids=ids).logits[0, -1].float().log_softmax(-1)[tok].item())
    return out


def test_kl_to_base_positive_after_a_step_and_matches_a_slow_token_loop(tiny_base, stepped):
    from tms.models.loading import load_model

    base = load_model(tiny_base, dtype="float32").eval()
    gen = generator(stepped)
    n, pairs = 2, examples()
    res = suite.kl_to_base(gen, base, pairs, MAX_NEW, seed=3, n=n)
    assert res["kl_seq"] > 0 and res["kl_token"] > 0 and res["kl_seq_per_prompt"] > 0
    # the same samples (generation is a deterministic function of model, prompts, n, seed), scored slowly
    prompts, comps = suite.kl_samples(gen, pairs, n, MAX_NEW, seed=3)
    assert len(comps) == n * sum(len(e) for _, e in pairs)
    per_sample, tokens, per_prompt = [], 0, {}
    for c in comps:
        lp_theta = slow_token_logprobs(gen.model, prompts[c.prompt_index], c.token_ids)
        lp_base = slow_token_logprobs(base, prompts[c.prompt_index], c.token_ids)
        assert lp_theta == pytest.approx(c.logprobs, abs=1e-4)
        kl = sum(a - b for a, b in zip(lp_theta, lp_base))
        per_sample.append(kl)
        tokens += len(c.token_ids)
        per_prompt.setdefault(c.prompt_index, []).append(kl)
    assert res["kl_seq"] == pytest.approx(sum(per_sample) / len(per_sample), abs=1e-4)
    assert res["kl_token"] == pytest.approx(sum(per_sample) / tokens, abs=1e-5)
    means = [sum(v) / len(v) for v in per_prompt.values()]
    assert res["kl_seq_per_prompt"] == pytest.approx(sum(means) / len(means), abs=1e-4)


def eval_cfg(cache, *overrides):
    """evaluate.py's config: the smoke world with θ0 = ``tiny_base`` (``model.name_or_path``)."""
    return compose(["experiment=smoke", f"cache_dir={cache}", *overrides], config_name="eval")


@pytest.fixture(scope="module")
def eval_run(tiny_base, stepped, tmp_path_factory):
    """evaluate.py's config composed with checkpoints_of = a T=1 "SFT" whose checkpoint is the stepped model."""
    from tms.cli.evaluate import evaluate

    ckpts = tmp_path_factory.mktemp("sft") / "checkpoints"
    ckpts.mkdir()
    (ckpts / "t=01").symlink_to(stepped, target_is_directory=True)
    write_json(ckpts / "trajectory.json", {"T": 1, "total_steps": 1,
                                           "checkpoints": {"1": {"step": 1, "path": "t=01", "pld": 1.0}}})
    run_dir = tmp_path_factory.mktemp("eval_run")
    cfg = eval_cfg(tmp_path_factory.mktemp("cache"), f"model.name_or_path={tiny_base}", f"checkpoints_of={ckpts}",
                   "label=stepped")
    evaluate(cfg, run_dir)
    return cfg, run_dir


def test_evaluate_writes_results_with_every_key(eval_run, tmp_path):
    from tms.cli.evaluate import evaluate

    cfg, run_dir = eval_run
    res = read_json(run_dir / "results.json")
    for key in RESULT_KEYS:
        assert key in res, key
    assert res["method"] == "stepped" and set(res["rows"]) == {"base", "stepped"}
    assert res["suite"] == {"name": "toy", "target": "sum", "other_targets": ["chain"],
                            "retention": ["add", "reverse", "max", "sort"]}
    base = res["rows"]["base"]
    for group in ("target", "retention"):
        assert set(res["kl_to_base"][group]) == {"kl_seq", "kl_token", "kl_seq_per_prompt"}
        assert res["kl_to_base"][group]["kl_seq"] > 0 and base["kl_to_base"][group]["kl_seq"] == 0.0
    assert set(res["pass_at_k"]) == {"1", "2", "4"} and {"pld", "nll_token"} <= set(res["pld"])
    assert res["forgetting"] == pytest.approx(sum(min(res["scores"][b] - base["scores"][b], 0.0)
                                                  for b in res["suite"]["retention"]) / 4)
    assert res["xfer"] == pytest.approx(res["scores"]["chain"] - base["scores"]["chain"])
    curve = read_json(run_dir / "checkpoints.json")
    assert [p["t"] for p in curve["checkpoints"]] == [0, 1]
    assert curve["checkpoints"][0]["kl_to_base"]["target"]["kl_seq"] == 0.0
    assert curve["checkpoints"][1]["kl_to_base"] == res["kl_to_base"]  # the same cached eval stage
    # θ0's evaluation is cached: evaluating θ0 again adds no stage
    cache = Path(cfg.cache_dir) / "eval"
    stages = sorted(p.name for p in cache.iterdir())
    res0 = evaluate(eval_cfg(cfg.cache_dir, f"model.name_or_path={cfg.model.name_or_path}"), tmp_path / "base")
    assert sorted(p.name for p in cache.iterdir()) == stages
    assert res0["method"] == "base" and res0["scores"] == base["scores"]


def test_wandb_offline_summary_holds_the_numbers(eval_run, tmp_path, monkeypatch):
    from tms.evaluation.wandb_log import log_results

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg, run_dir = eval_run
    cfg = eval_cfg(cfg.cache_dir, "logger=wandb")
    res = read_json(run_dir / "results.json")
    summary = log_results(cfg, res, tmp_path, read_json(run_dir / "checkpoints.json"))
    expected = {  # metric name -> where results.json holds it, written out by hand
        "target": res["target"], "xfer": res["xfer"], "forgetting": res["forgetting"], "sc_acc": res["sc_acc"],
        "answer_entropy": res["answer_entropy"], "seed": res["seed"], "scores/add": res["scores"]["add"],
        "scores/sum": res["scores"]["sum"], "retention/sort": res["retention"]["sort"],
        "kl_to_base/retention/kl_seq": res["kl_to_base"]["retention"]["kl_seq"],
        "kl_to_base/target/kl_token": res["kl_to_base"]["target"]["kl_token"], "pass_at_k/1": res["pass_at_k"]["1"],
        "pass_at_k/4": res["pass_at_k"]["4"], "pld/pld": res["pld"]["pld"],
        "rows/base/target": res["rows"]["base"]["target"],
        "rows/stepped/scores/chain": res["rows"]["stepped"]["scores"]["chain"],
        "rows/base/kl_to_base/target/kl_seq": 0.0,
    }
    assert {k: summary.get(k) for k in expected} == expected
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in expected.values())
    for name, value in summary.items():  # nothing else: every name is the path of a number of results.json
        node = res
        for part in name.split("/"):
            node = node[part]
        assert node == value and not isinstance(node, bool), name
    assert not [k for k in summary if "samples" in k.split("/")]  # completions go to the table, not the summary
    assert {"method", "model", "base_model", "suite/target", "rows/base/method"}.isdisjoint(summary)  # texts
    logs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    for _ in range(100):  # wandb-core finishes writing the offline log shortly after run.finish() returns
        blob = logs[0].read_bytes()
        if b"curve/target" in blob and b"kl_to_base/retention/kl_seq" in blob:
            break
        time.sleep(0.2)
    assert b"kl_to_base/retention/kl_seq" in blob and b"samples" in blob and b"curve/target" in blob
    assert log_results(compose(["experiment=smoke"], config_name="eval"), res, tmp_path) is None  # csv logger


def test_wandb_summary_of_a_hand_written_result(tmp_path, monkeypatch):
    """The summary written for a small results dict: nested numbers keyed by their path joined with "/"; strings,
    booleans, None, non-finite numbers and ``samples`` (of the run and of each row) left out."""
    from tms.evaluation.wandb_log import log_results

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    sample = {"prompt": "sum 1 2 3", "completion": "answer 6", "score": 1.0}
    res = {"method": "stepped", "target": 0.25, "seed": 3, "resumed": True, "model": None, "nan": float("nan"),
           "inf": float("inf"), "scores": {"sum": 0.25, "add": 1}, "pass_at_k": {"1": 0.25, "4": 0.5},
           "kl_to_base": {"target": {"kl_seq": 1.5, "kl_token": 0.125}}, "samples": {"sum": [sample], "shown": 1},
           "rows": {"base": {"target": 0.0, "samples": {"sum": [sample]}, "method": "base"}}}
    summary = log_results(eval_cfg(tmp_path / "cache", "logger=wandb"), res, tmp_path)
    assert summary == {"target": 0.25, "seed": 3, "scores/sum": 0.25, "scores/add": 1, "pass_at_k/1": 0.25,
                       "pass_at_k/4": 0.5, "kl_to_base/target/kl_seq": 1.5, "kl_to_base/target/kl_token": 0.125,
                       "rows/base/target": 0.0}


# -- reports ------------------------------------------------------------------------------------------------------
SUITE = {"name": "toy", "target": "sum", "other_targets": ["sum", "chain"], "retention": ["add", "reverse"]}
BASE = {"sum": 0.10, "chain": 0.40, "add": 0.90, "reverse": 0.80}


def row(name, scores, kl):
    r = {"method": name, "scores": scores, "target": scores["sum"], "pld": {"pld": 5.0, "nll_token": 0.5},
         "kl_to_base": {"target": {"kl_seq": kl, "kl_token": kl / 10}, "retention": {"kl_seq": kl / 2, "kl_token": kl / 20}},
         "pass_at_k": {"1": scores["sum"]}, "sc_acc": scores["sum"], "answer_entropy": 0.5, "samples": {}}
    return {**r, **relative_metrics(r, {"scores": BASE}, SUITE)}


def fake_run(path, method, scores, kl, seed=0, alpha=None, sft=None, curve=None):
    """A pipeline run directory: results.json (rows base / [sft] / method), config.resolved.yaml, overrides."""
    path.mkdir(parents=True)
    rows = {"base": row("base", BASE, 0.0)}
    if sft is not None:
        rows["sft"] = row("sft", *sft)
    rows[method] = row(method, scores, kl)
    write_json(path / "results.json", {**rows[method], "seed": seed, "model": str(path), "rows": rows})
    source = {"_target_": "x"} if alpha is None else {"alpha": alpha, "p_t": "uniform"}
    cfg = {"seed": seed, "method": {"name": method}, "sft": {"num_checkpoints": 3},
           "data": {"name": "toy_sum", "target_source": source},
           "eval": {k: v for k, v in SUITE.items() if k != "name"}}
    (path / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
    (path / ".hydra").mkdir()
    overrides = [f"method={method}", f"seed={seed}"] + ([f"data.target_source.alpha={alpha}"] if alpha else [])
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if curve is not None:
        write_json(path / "checkpoints.json", curve)


def fake_curve(sft_scores):
    pts = []
    for t, frac in enumerate([0.0, 0.5, 1.0, 1.0]):
        scores = {b: BASE[b] + frac * (sft_scores[b] - BASE[b]) for b in BASE}
        r = row("t", scores, 40.0 * frac)
        pts.append({"t": t, "step": 2 * t, "target": scores["sum"], "scores": scores, "retention": r["retention"],
                    "retention_mean": (scores["add"] + scores["reverse"]) / 2, "forgetting": r["forgetting"],
                    "xfer": r["xfer"], "kl_to_base": r["kl_to_base"], "pld": {"pld": 9.0 - 2 * t},
                    "pld_train": {"pld": 9.5 - 2 * t} if t else None})
    return {"T": 3, "total_steps": 6, "suite": SUITE, "checkpoints_dir": "/sft/checkpoints", "checkpoints": pts}


def test_report_table_and_plots_from_run_dirs(tmp_path):
    from tms.evaluation.report import main

    sft = ({"sum": 0.70, "chain": 0.20, "add": 0.30, "reverse": 0.50}, 40.0)
    tms1 = {"sum": 0.60, "chain": 0.45, "add": 0.85, "reverse": 0.70}
    tms2 = {"sum": 0.64, "chain": 0.35, "add": 0.75, "reverse": 0.80}
    runs = tmp_path / "multirun"
    fake_run(runs / "0_sft", "sft", *sft, curve=fake_curve(sft[0]))
    fake_run(runs / "1_tms_a", "tms", tms1, 8.0, seed=0, alpha=0.25, sft=sft)
    fake_run(runs / "2_tms_a", "tms", tms2, 6.0, seed=1, alpha=0.25, sft=sft)
    fake_run(runs / "3_tms_b", "tms", {"sum": 0.5, "chain": 0.4, "add": 0.9, "reverse": 0.9}, 2.0, alpha=0.5, sft=sft)
    out = tmp_path / "report"
    main([str(runs), "--out", str(out)])
    for name in ("table.md", "table.csv", "pareto.png", "trajectory.png", "forgetting_vs_kl.png"):
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recs = {r["label"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert list(recs) == ["base", "sft", "tms (α=0.25)", "tms (α=0.5)"]
    a = recs["tms (α=0.25)"]
    assert a["n"] == "2" and recs["sft"]["n"] == "2"  # seeds averaged; each seed's SFT row counted once
    # hand computation from the results.json files: means over the two seeds of S_b(π) - S_b(θ0)
    d_add = ((0.85 - 0.90) + (0.75 - 0.90)) / 2
    d_rev = ((0.70 - 0.80) + (0.80 - 0.80)) / 2
    assert float(a["delta/add"]) == pytest.approx(d_add) and float(a["delta/reverse"]) == pytest.approx(d_rev)
    assert float(a["add"]) == pytest.approx(0.80) and float(a["target/sum"]) == pytest.approx(0.62)
    assert float(a["xfer"]) == pytest.approx(((0.45 - 0.40) + (0.35 - 0.40)) / 2)
    assert float(a["forgetting"]) == pytest.approx(((-0.05 - 0.10) / 2 + (-0.15 + 0.0) / 2) / 2)
    assert float(a["kl_target_seq"]) == pytest.approx(7.0)
    assert float(recs["sft"]["delta/add"]) == pytest.approx(-0.60)
    md = (out / "table.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| tms (α=0.25)"))
    assert "80.0 (↓10.0)" in line and "75.0 (↓5.0)" in line  # add, reverse: score (Δ) in points
    assert next(ln for ln in md.splitlines() if ln.startswith("| sft ")).count("↓60.0") == 1


def test_report_on_real_evaluate_runs(eval_run, tmp_path):
    from tms.evaluation.report import report
    from tms.cli.evaluate import evaluate

    cfg, run_dir = eval_run
    evaluate(eval_cfg(cfg.cache_dir, f"model.name_or_path={cfg.model.name_or_path}"), tmp_path / "base")
    files = report([run_dir, tmp_path / "base"], tmp_path / "rep")
    md = files["table.md"].read_text()
    assert "| base |" in md and "| stepped |" in md
    recs = {r["label"]: r for r in csv.DictReader(files["table.csv"].open())}
    res = read_json(run_dir / "results.json")
    assert float(recs["stepped"]["delta/add"]) == pytest.approx(res["scores"]["add"] - res["rows"]["base"]["scores"]["add"])
    assert float(recs["stepped"]["kl_retention_seq"]) == pytest.approx(res["kl_to_base"]["retention"]["kl_seq"])
    assert all(files[n].stat().st_size > 0 for n in ("pareto.png", "trajectory.png", "forgetting_vs_kl.png"))


@pytest.mark.parametrize("suite_name", ["paper", "paper_safety"])
def test_paper_suites_compose_and_build_their_tasks(suite_name):
    from hydra.utils import instantiate

    from tms.config.eval import check_suite
    from tms.core.errors import ConfigError

    for data in ("math500", "math", "gsm8k", "countdown"):
        cfg = compose([f"eval={suite_name}", f"data={data}"], config_name="eval")
        check_suite(cfg)
        assert cfg.eval.target == data and cfg.eval.sampling.n >= max(cfg.eval.sampling.ks) == 100
    tasks = {name: instantiate(node) for name, node in cfg.eval.benchmarks.items()}  # builds, loads no data
    assert {name: t.name for name, t in tasks.items()} == {name: name for name in tasks}
    if suite_name == "paper_safety":
        assert tasks["wildguardtest"].judge is tasks["wildjailbreak"].judge  # one judge model, shared
    with pytest.raises(ConfigError, match="eval.target"):
        check_suite(compose([f"eval={suite_name}", "data=toy_sum"], config_name="eval"))
