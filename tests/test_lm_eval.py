"""lm-evaluation-harness as an evaluation backend (eval=lm_eval / lm_eval_toy), offline on the smoke toy world.

The exporter and the config checks run everywhere; the end-to-end runs need lm-eval and its HF model type (the
``lm_eval`` extra, in ``dev``) and are skipped, with the reason, where they are not installed.
"""
import json

import pytest
import torch
import yaml

from tests.conftest import compose
from tms.core.errors import ConfigError
from tms.core.io import read_json
from tms.evaluation import lm_eval as lm_eval_backend
from tms.evaluation.lm_eval_tasks import SCORE_METRIC, TOY_SKILLS, export_toy_tasks, process_results, toy_node
from tms.toy.tasks import ToyTask

MISSING = lm_eval_backend.missing_packages("hf")
needs_lm_eval = pytest.mark.skipif(bool(MISSING), reason=f"lm-evaluation-harness' HF model needs {MISSING}: "
                                   "pip install 'tms[lm_eval]' (it is in the dev extra)")
LIMIT = 16  # <= eval.batch_size (256): one left-padded batch per benchmark, as in tms's suite
RESULT_KEYS = ("scores", "target", "samples", "deltas", "xfer", "retention", "forgetting", "model", "base_model",
               "seed", "suite", "rows", "method")


def lm_cfg(cache, *extra):
    return compose(["experiment=smoke", f"cache_dir={cache}", "eval=lm_eval_toy", f"eval.limit={LIMIT}", *extra],
                   config_name="eval")


# -- the exporter ---------------------------------------------------------------------------------------------------
def function_tag_loader():
    """A YAML loader that keeps lm-eval's ``!function`` tags as strings."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    return Loader


def test_export_writes_one_lm_eval_task_per_toy_benchmark(tmp_path):
    names = export_toy_tasks(tmp_path, n_test=20, limit=5, max_gen_toks=24)
    assert names == {s: f"tms_{s}" for s in TOY_SKILLS}
    for skill, name in names.items():
        cfg = yaml.load((tmp_path / f"{name}.yaml").read_text(), Loader=function_tag_loader())
        assert cfg["task"] == name and cfg["output_type"] == "generate_until" and cfg["num_fewshot"] == 0
        assert cfg["dataset_path"] == "json" and cfg["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / f"{name}.jsonl")
        assert cfg["generation_kwargs"] == {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 24}
        assert cfg["process_results"] == "!function tms_lm_eval_utils.process_results"
        assert "description" not in cfg  # the toy tasks have no system prompt
        docs = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        examples = ToyTask(skill, n_train=0, n_val=0, n_test=20, seed=0).examples("test", 5)
        assert [d["id"] for d in docs] == [e.id for e in examples]  # the first `limit` test prompts, in tms's order
        assert [d["prompt"] for d in docs] == [e.prompt for e in examples]
        assert json.loads(docs[0]["tms_task"]) == toy_node(skill, 20, 0)


def test_process_results_grades_with_the_tasks_verifier(tmp_path):
    export_toy_tasks(tmp_path, skills=("sum", "sort"), n_test=4)
    for skill in ("sum", "sort"):
        task = ToyTask(skill, n_train=0, n_val=0, n_test=4, seed=0)
        docs = [json.loads(line) for line in (tmp_path / f"tms_{skill}.jsonl").read_text().splitlines()]
        for doc, e in zip(docs, task.examples("test")):
            assert process_results(doc, [e.reference]) == {"score": 1.0}  # the reference's final answer verifies
            assert process_results(doc, ["no answer here"]) == {"score": task.verify("no answer here", e.answer)}
    assert SCORE_METRIC == "score,none"


# -- the config checks (before any compute) ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, match", [
    (["eval.tasks=[sum,gsm8k]"], r"eval.tasks: unknown benchmark key\(s\) \['gsm8k'\]"),
    (["eval.tasks=[chain]"], r"eval.target: 'sum' is not among eval.tasks"),
    (["eval.retention=[add,hotpotqa]"], r"eval.retention: \['hotpotqa'\] not in eval.benchmarks"),
    (["+eval.benchmarks.sum.task=gsm8k"], r"eval.benchmarks.sum: needs exactly one of task"),
    (["~eval.benchmarks.sum", "+eval.benchmarks.sum={task: gsm8k}"], r"eval.benchmarks.sum.metric: missing"),
    (["~eval.benchmarks.sum", "+eval.benchmarks.sum={task: gsm8k, metric: exact_match}"],
     r"eval.benchmarks.sum.metric: must be '<metric>,<filter>'"),
    (["+eval.benchmarks.sum.metric='acc,none'"], r"eval.benchmarks.sum.metric: an exported task reports 'score,none'"),
    (["+eval.benchmarks.sum.shots=3"], r"eval.benchmarks.sum.shots: unknown key"),
    (["eval.benchmarks.sum.export.skill=nope"], r"eval.benchmarks.sum.export: unknown toy skill 'nope'"),
    (["eval.batch_size=0"], r"eval.batch_size: must be an integer >= 1 or 'auto'"),
    (["eval.num_fewshot=-1"], r"eval.num_fewshot: must be null or an integer >= 0"),
    (["eval.harness=lmeval"], r"eval.harness: must be one of \('tms', 'lm_eval'\)"),
    (["eval.include_path=/nonexistent/tasks"], r"eval.include_path: /nonexistent/tasks is not a directory"),
])
def test_config_errors_name_the_key(tmp_path, overrides, match):
    from tms.config.eval import check_suite

    with pytest.raises(ConfigError, match=match):
        check_suite(lm_cfg(tmp_path, *overrides))


def test_lm_eval_not_installed_is_a_config_error(tmp_path, monkeypatch):
    """Refused before compute when lm-eval (or its HF model's accelerate) is missing or older than 0.4.4."""
    from tms.config.eval import check_suite

    cfg = lm_cfg(tmp_path)
    monkeypatch.setattr(lm_eval_backend, "installed_version", lambda: "0.4.13")
    for absent in ("lm_eval", "accelerate"):  # whatever this machine has installed
        monkeypatch.setattr(lm_eval_backend.importlib.util, "find_spec",
                            lambda name, *a, absent=absent: None if name == absent else object())
        with pytest.raises(ConfigError, match=rf"eval.harness: lm_eval needs \['{absent}'\].*pip install 'tms\[lm_eval\]'"):
            check_suite(cfg)
    monkeypatch.setattr(lm_eval_backend.importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(lm_eval_backend, "installed_version", lambda: "0.4.2")
    with pytest.raises(ConfigError, match=r"lm_eval needs \['lm_eval>=0.4.4 \(installed: 0.4.2\)'\]"):
        check_suite(cfg)


def test_vllm_model_without_vllm_is_a_config_error(tmp_path, monkeypatch):
    from tms.config.eval import check_suite

    cfg = lm_cfg(tmp_path, "eval.backend=vllm")
    monkeypatch.setattr(lm_eval_backend, "installed_version", lambda: "0.4.13")
    monkeypatch.setattr(lm_eval_backend.importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else object())
    with pytest.raises(ConfigError, match=r"eval.backend: lm-eval's vllm model needs vLLM, not installed"):
        check_suite(cfg)


def test_the_paper_config_maps_the_tms_benchmark_keys(tmp_path):
    """conf/eval/lm_eval.yaml: the paper's targets and retention benchmark keys, each an lm-eval task and metric."""
    from tms.config.eval import evaluated, suite_names

    cfg = compose(["data=gsm8k", f"cache_dir={tmp_path}", "eval=lm_eval"], config_name="eval")
    assert suite_names(cfg) == {"name": "lm_eval", "target": "gsm8k", "other_targets": ["math500", "math", "ifeval",
                                "mmlu_pro"], "retention": ["arc_challenge"]}
    assert evaluated(cfg) == ["gsm8k", "math500", "math", "ifeval", "mmlu_pro", "arc_challenge"]
    bench = cfg.eval.benchmarks
    assert (bench.gsm8k.task, bench.gsm8k.metric) == ("gsm8k", "exact_match,strict-match")
    assert (bench.arc_challenge.task, bench.arc_challenge.metric) == ("arc_challenge", "acc_norm,none")
    assert (bench.ifeval.task, bench.math.task, bench.mmlu_pro.task) == ("ifeval", "minerva_math", "mmlu_pro")
    narrowed = compose(["data=gsm8k", f"cache_dir={tmp_path}", "eval=lm_eval", "eval.tasks=[gsm8k,arc_challenge]"],
                       config_name="eval")
    assert suite_names(narrowed)["other_targets"] == [] and suite_names(narrowed)["retention"] == ["arc_challenge"]


@needs_lm_eval
def test_every_default_task_is_in_lm_evals_registry(tmp_path):
    """The default tasks of conf/eval/lm_eval.yaml exist in the installed lm-eval (its registry; no data loaded), and a
    misspelt one is refused before compute."""
    from tms.config.eval import check_lm_eval_tasks

    cfg = compose(["data=gsm8k", f"cache_dir={tmp_path}", "eval=lm_eval"], config_name="eval")
    check_lm_eval_tasks(cfg)
    bad = compose(["data=gsm8k", f"cache_dir={tmp_path}", "eval=lm_eval", "eval.benchmarks.gsm8k.task=gsm8kk"],
                  config_name="eval")
    with pytest.raises(ConfigError, match=r"eval.benchmarks.gsm8k.task: 'gsm8kk' is no task, group or tag of lm-eval"):
        check_lm_eval_tasks(bad)


# -- end to end on the smoke toy world ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(smoke_base, tmp_path_factory):
    """The smoke θ0 after 800 AdamW steps on the four retention skills: a model whose greedy completions differ per
    prompt and that solves a few test prompts (the smoke θ0 itself answers every prompt with blanks, scores 0)."""
    from tms.data.formatting import collate_right_padded, completion_ids, prompt_ids
    from tms.models.loading import load_model, load_tokenizer, save_pretrained
    from tms.objectives.nll import masked_nll

    torch.manual_seed(0)
    tok, model = load_tokenizer(smoke_base), load_model(smoke_base, dtype="float32")
    items = [(p + c, len(p)) for skill in ("max", "sort", "reverse", "add")
             for e in ToyTask(skill, n_train=400, n_val=0, n_test=0, seed=1).examples("train")
             for p, c in [(prompt_ids(tok, [{"role": "user", "content": e.prompt}]), completion_ids(tok, e.reference))]]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    draw = torch.Generator().manual_seed(0)
    for _ in range(800):
        batch = collate_right_padded([items[i] for i in torch.randint(len(items), (32,), generator=draw).tolist()],
                                     tok.pad_token_id)
        loss, _ = masked_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("lm_eval_trained") / "model"
    save_pretrained(model, tok, out)
    return str(out)


@pytest.fixture(scope="module")
def lm_results(smoke_cache, trained, tmp_path_factory):
    """``evaluate.py eval=lm_eval_toy model_path=<trained> label=trained``: θ0 and the trained model through lm-eval."""
    from tms.cli.evaluate import evaluate

    run = tmp_path_factory.mktemp("lm_eval_run")
    return evaluate(lm_cfg(smoke_cache, f"model_path={trained}", "label=trained"), run), run


@needs_lm_eval
def test_results_json_has_the_suites_structure(lm_results, smoke_base):
    res, run = lm_results
    assert read_json(run / "results.json") == json.loads(json.dumps(res))
    assert set(RESULT_KEYS) <= set(res) and set(res["rows"]) == {"base", "trained"}
    assert res["base_model"] == smoke_base and res["method"] == "trained" and res["seed"] == 0
    assert res["suite"] == {"name": "lm_eval_toy", "target": "sum", "other_targets": ["chain"],
                            "retention": ["add", "reverse", "max", "sort"]}
    base = res["rows"]["base"]
    for row in (res, base):
        assert set(row["scores"]) == set(TOY_SKILLS)
        assert all(0.0 <= v <= 1.0 for v in row["scores"].values())
        assert row["target"] == row["scores"]["sum"]
        assert {b: d["n"] for b, d in row["lm_eval"]["benchmarks"].items()} == {b: LIMIT for b in TOY_SKILLS}
        assert {d["task"] for d in row["lm_eval"]["benchmarks"].values()} == {f"tms_{s}" for s in TOY_SKILLS}
        assert row["lm_eval"]["version"] == lm_eval_backend.installed_version() and row["lm_eval"]["model"] == "hf"
        assert all(len(s) == 3 for s in row["samples"].values())
    assert sum(res["scores"].values()) > 0  # the comparisons below are not between all-zero rows
    # the Δ metrics are tms's own (eq. 3.2 / S_xfer) of these scores
    assert res["deltas"] == pytest.approx({b: res["scores"][b] - base["scores"][b] for b in TOY_SKILLS})
    assert res["xfer"] == pytest.approx(res["scores"]["chain"] - base["scores"]["chain"])
    assert res["retention"] == {b: res["scores"][b] for b in ("add", "reverse", "max", "sort")}
    drops = [min(res["scores"][b] - base["scores"][b], 0.0) for b in ("add", "reverse", "max", "sort")]
    assert res["forgetting"] == pytest.approx(sum(drops) / 4)  # eq. 3.2: only drops count


@needs_lm_eval
def test_lm_eval_agrees_with_tms_suite_exactly(lm_results, smoke_cache, trained, tmp_path):
    """lm-eval's scores equal tms's suite's (eval=toy) on the same prompts, per benchmark and in every Δ metric.

    Why exactly: the exported tasks render the same chat (the toy chat template on the user turn, no system
    prompt) and lm-eval tokenises the rendered string to the ids of :func:`tms.data.formatting.prompt_ids` (the toy
    tokenizer adds no BOS; its role tokens are special tokens); both decode greedily with the same budget (24) and
    stop at eos; the toy model's generation_config sets no penalty or sampling default that lm-eval's HF model would
    apply (a Qwen checkpoint's repetition_penalty would be); both generate each benchmark's 16 prompts in one
    left-padded batch of width = the longest prompt (limit <= batch_size = 256; only the row order differs, which
    does not change a row's numbers); both decode without special tokens and grade with ToyTask.verify. With a
    batch smaller than the benchmark, the padding would differ per batch and float rounding could flip a token.
    """
    from tms.cli.evaluate import evaluate

    lm, _ = lm_results
    ours = evaluate(compose(["experiment=smoke", f"cache_dir={smoke_cache}", "eval=toy", f"eval.limit={LIMIT}",
                             f"model_path={trained}", "label=trained"], config_name="eval"), tmp_path)
    for label in ("base", "trained"):
        a, b = lm["rows"][label], ours["rows"][label]
        assert a["scores"] == b["scores"], label
        for key in ("target", "deltas", "xfer", "retention", "forgetting"):
            assert a[key] == b[key], (label, key)
        for bench in TOY_SKILLS:  # the same completions, not only the same accuracy
            assert [s["completion"] for s in a["samples"][bench]] == [s["completion"] for s in b["samples"][bench]]
            assert [s["score"] for s in a["samples"][bench]] == [s["score"] for s in b["samples"][bench]]
            assert [s["prompt"] for s in a["samples"][bench]] == [f"<|user|>{s['prompt']}<|assistant|>"
                                                                  for s in b["samples"][bench]]


@needs_lm_eval
def test_lm_eval_stage_is_cached(lm_results, smoke_cache, trained, tmp_path, monkeypatch):
    """A second run with the same model, tasks and settings reads the cached ``lm_eval`` stages; another limit does not."""
    from tms.cli.evaluate import evaluate
    from tms.stages import evaluation

    def refuse(*args, **kwargs):
        raise AssertionError("lm-eval ran again")

    monkeypatch.setattr(evaluation, "evaluate_lm_eval", refuse)
    again = evaluate(lm_cfg(smoke_cache, f"model_path={trained}", "label=trained"), tmp_path / "again")
    assert again["rows"] == lm_results[0]["rows"]
    keys = [read_json(m)["key"] for m in (smoke_cache / "lm_eval").glob("*/manifest.json")]
    keys = [k for k in keys if k["settings"]["limit"] == LIMIT and set(k["benchmarks"]) == set(TOY_SKILLS)]
    assert len(keys) == 2 and all(k["lm_eval"] == lm_eval_backend.installed_version() for k in keys)  # θ0, trained
    with pytest.raises(AssertionError, match="lm-eval ran again"):
        evaluate(lm_cfg(smoke_cache, f"model_path={trained}", "label=trained", "eval.limit=8"), tmp_path / "other")


LOCAL_TASK = """task: toy_add_regex
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}, cache_dir: {cache}}}
output_type: generate_until
test_split: test
num_fewshot: 0
doc_to_text: prompt
doc_to_target: answer
generation_kwargs: {{until: [], do_sample: false, temperature: 0.0, max_gen_toks: 24}}
filter_list:
  - name: last-int
    filter:
      - {{function: regex, regex_pattern: "(-?[0-9]+)", group_select: -1}}
      - {{function: take_first}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
"""


@needs_lm_eval
def test_a_task_of_include_path_scored_by_its_filtered_metric(lm_results, smoke_cache, trained, tmp_path):
    """A benchmark given as {task, metric} (the path lm-eval's hub tasks take): a task YAML of eval.include_path, the
    toy add skill graded by lm-eval's own regex filter (last integer) and exact_match, scores what tms's verifier
    scores (the last integer, exact match), and its samples are the filter's."""
    from tms.cli.evaluate import evaluate

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    docs = [{"prompt": e.prompt, "answer": e.answer} for e in ToyTask("add", n_train=0, n_val=0, n_test=200, seed=0)
            .examples("test", LIMIT)]
    (tmp_path / "add.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "toy_add_regex.yaml").write_text(LOCAL_TASK.format(data=tmp_path / "add.jsonl", cache=tmp_path / "hf"))
    res = evaluate(lm_cfg(smoke_cache, f"model_path={trained}", "label=trained", f"eval.include_path={tasks}",
                          "eval.tasks=[sum,add_regex]",
                          "+eval.benchmarks.add_regex={task: toy_add_regex, metric: 'exact_match,last-int'}"),
                   tmp_path / "run")
    assert set(res["scores"]) == {"sum", "add_regex"} and res["suite"]["retention"] == []
    assert res["scores"]["add_regex"] == lm_results[0]["scores"]["add"]
    detail = dict(res["lm_eval"]["benchmarks"]["add_regex"])
    assert 0.0 <= detail.pop("stderr") <= 0.5  # lm-eval's closed-form stderr of a mean of 0/1 scores
    assert detail == {"task": "toy_add_regex", "metric": "exact_match,last-int", "n": LIMIT, "num_fewshot": 0}
    ours = lm_results[0]["samples"]["add"]
    assert [s["completion"] for s in res["samples"]["add_regex"]] == [s["completion"] for s in ours]
    assert [s["score"] for s in res["samples"]["add_regex"]] == [s["score"] for s in ours]
    assert all(s["extracted"] in s["completion"] or s["extracted"] == "[invalid]" for s in res["samples"]["add_regex"])


@needs_lm_eval
def test_isolated_run_gives_the_in_process_numbers(lm_results, smoke_cache, smoke_base):
    """``eval.isolated=true`` (the default of the vllm model type) runs lm-eval in a spawned child: same scores and
    samples as in this process (checked through the HF model, which needs no GPU)."""
    from tms.config.eval import evaluated
    from tms.core.keys import plain
    from tms.evaluation.lm_eval import evaluate_lm_eval
    from tms.stages.common import model_kwargs
    from tms.stages.evaluation import lm_eval_settings

    cfg = lm_cfg(smoke_cache)
    benchmarks = {b: plain(cfg.eval.benchmarks[b]) for b in evaluated(cfg)[:2]}
    res = evaluate_lm_eval(smoke_base, benchmarks, lm_eval_settings(cfg), model_kwargs(cfg), 0, target="sum",
                           isolated=True)
    base = lm_results[0]["rows"]["base"]
    assert res["scores"] == {b: base["scores"][b] for b in benchmarks}
    assert res["samples"] == {b: base["samples"][b] for b in benchmarks}


def test_metric_missing_from_lm_evals_output_names_the_benchmark():
    """After a run, a configured metric lm-eval did not report is an error naming the benchmark and what it reported."""
    raw = {"results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": 0.1}}}
    assert lm_eval_backend.metric_value(raw, "gsm8k", "exact_match,strict-match", "gsm8k") == (0.5, 0.1)
    with pytest.raises(KeyError, match=r"eval.benchmarks.gsm8k.metric: 'acc,none' is not among .*\['exact_match,strict-match'\]"):
        lm_eval_backend.metric_value(raw, "gsm8k", "acc,none", "gsm8k")
    with pytest.raises(KeyError, match=r"eval.benchmarks.math: lm-eval returned no results for task 'minerva_math'"):
        lm_eval_backend.metric_value(raw, "minerva_math", "math_verify,none", "math")


def test_an_exported_toy_benchmark_inside_theta0s_pretraining_is_refused(tmp_path):
    """The toy world's held-out check covers lm_eval_toy's exported tasks (θ0 never saw a test prompt)."""
    from tms.config.inputs import check_toy_held_out

    cfg = compose([f"cache_dir={tmp_path}", "eval=lm_eval_toy"], config_name="eval")
    check_toy_held_out(cfg)
    bad = compose([f"cache_dir={tmp_path}", "eval=lm_eval_toy", "eval.benchmarks.add.export.n_test=3001"],
                  config_name="eval")
    with pytest.raises(ConfigError, match=r"eval\.benchmarks\.add\.export: .*exceed model\.build\.held_out\.add=3000"):
        check_toy_held_out(bad)
