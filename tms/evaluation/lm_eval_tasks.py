"""tms tasks as local lm-evaluation-harness tasks: a JSONL of the prompts and a ``generate_until`` task YAML each.

lm-eval's own tasks load their data from the hub; a tms :class:`~tms.data.tasks.base.Task` (the toy world's skills,
Countdown, any benchmark of a tms suite) is written here as a task lm-eval reads offline::

    <out_dir>/<name>.jsonl   one document per example: id, prompt (the user turn), reference, answer (JSON), tms_task
    <out_dir>/<name>.yaml    dataset_path: json + dataset_kwargs.data_files.test = that JSONL, doc_to_text: prompt,
                             greedy generation until eos, description = the task's system prompt,
                             process_results: !function tms_lm_eval_utils.process_results
    <out_dir>/tms_lm_eval_utils.py   imports :func:`process_results` from the tms that wrote the tasks (its source
                             root first on ``sys.path``), so ``lm_eval --include_path <out_dir>`` grades them anywhere

and ``lm_eval.tasks.TaskManager(include_path=out_dir)`` finds them. With lm-eval's chat template
(``apply_chat_template=True``) the context lm-eval builds is the chat of :meth:`Task.messages` (the description is
the system turn, the prompt the user turn, then the generation prompt), i.e. the token ids
:func:`tms.data.formatting.prompt_ids` gives tms's own suite. :func:`process_results` grades a completion with the
task's own verifier (the ``tms_task`` field of every document is its Hydra node), so the metric ``score,none`` is
the score tms's suite computes (for the toy skills: exact match of the extracted answer).

``python -m tms.evaluation.lm_eval_tasks OUT_DIR [--n-test N] [--limit N]`` writes the toy world's six benchmarks.
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any, Mapping

import yaml
from hydra.utils import instantiate

from tms.data.tasks.base import Task

#: the metric every exported task reports (lm-eval names it ``<metric>,<filter>``; no filter: ``none``)
SCORE_METRIC = "score,none"
#: the toy world's benchmarks (conf/eval/toy.yaml): the two targets, then the retention skills
TOY_SKILLS = ("sum", "chain", "add", "reverse", "max", "sort")
UTILS = "tms_lm_eval_utils"
UTILS_SOURCE = '''"""Written by tms.evaluation.lm_eval_tasks: lm-eval grades the exported tasks with the tms task's verifier."""
import sys

TMS_ROOT = {root!r}  # the source root of the tms that exported these tasks
if TMS_ROOT not in sys.path:
    sys.path.insert(0, TMS_ROOT)

from tms.evaluation.lm_eval_tasks import process_results  # noqa: E402,F401
'''


def toy_node(skill: str, n_test: int = 200, seed: int = 0) -> dict[str, Any]:
    """The Hydra node of a toy benchmark, as in ``conf/eval/toy.yaml`` (test split only)."""
    return {"_target_": "tms.toy.tasks.ToyTask", "skill": skill, "n_train": 0, "n_val": 0, "n_test": int(n_test),
            "seed": int(seed)}


def documents(task: Task, node: Mapping[str, Any], split: str = "test", limit: int | None = None) -> list[dict]:
    """The lm-eval documents of ``task``'s ``split`` (the first ``limit``): one per example, in tms's order."""
    spec = json.dumps(dict(node), sort_keys=True)
    return [{"id": e.id, "prompt": e.prompt, "reference": e.reference, "answer": json.dumps(e.answer),
             "tms_task": spec} for e in task.examples(split, limit)]


def task_config(name: str, data_file: Path, max_gen_toks: int, system_prompt: str | None = None,
                datasets_cache: Path | None = None) -> dict[str, Any]:
    """The lm-eval task config of an exported task (without ``process_results``, a YAML tag :func:`write_yaml` adds)."""
    kwargs: dict[str, Any] = {"data_files": {"test": str(data_file)}}
    if datasets_cache is not None:  # the Arrow cache of datasets' json builder, beside the export (not ~/.cache)
        kwargs["cache_dir"] = str(datasets_cache)
    cfg: dict[str, Any] = {
        "task": name, "dataset_path": "json", "dataset_kwargs": kwargs, "output_type": "generate_until",
        "test_split": "test", "num_fewshot": 0, "doc_to_text": "prompt", "doc_to_target": "reference",
        # until: [] -> lm-eval stops at the tokenizer's eos only (it adds it), as tms's generators do
        "generation_kwargs": {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": int(max_gen_toks)},
        "metric_list": [{"metric": SCORE_METRIC.split(",")[0], "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "source": "tms.evaluation.lm_eval_tasks"},
    }
    if system_prompt:
        cfg["description"] = system_prompt
    return cfg


def write_yaml(path: Path, cfg: Mapping[str, Any]) -> Path:
    """``cfg`` as YAML plus ``process_results: !function tms_lm_eval_utils.process_results`` (a YAML tag: lm-eval loads
    the function from the file of that name next to the YAML, :func:`write_utils`)."""
    text = yaml.safe_dump(dict(cfg), sort_keys=False, allow_unicode=True)
    path.write_text(text + f"process_results: !function {UTILS}.process_results\n")
    return path


def write_utils(out_dir: Path) -> Path:
    """``<out_dir>/tms_lm_eval_utils.py``: :func:`process_results` of this tms (its source root goes first on
    ``sys.path`` there, so the tasks are graded by the tms that wrote them, also from lm-eval's own CLI)."""
    root = Path(__file__).resolve().parents[2]
    path = out_dir / f"{UTILS}.py"
    path.write_text(UTILS_SOURCE.format(root=str(root)))
    return path


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    with open(path, "w") as fh:
        for doc in docs:
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path


def export_task(out_dir: str | Path, name: str, node: Mapping[str, Any], split: str = "test",
                limit: int | None = None, max_gen_toks: int = 256, datasets_cache: Path | None = None) -> Path:
    """Write the tms task of Hydra ``node`` as the lm-eval task ``name`` into ``out_dir``; returns its YAML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = instantiate(dict(node))
    docs = documents(task, node, split, limit)
    if not docs:
        raise ValueError(f"lm-eval export of {name!r}: the {split} split of {task.name!r} is empty")
    data = write_jsonl(out / f"{name}.jsonl", docs)
    write_utils(out)
    return write_yaml(out / f"{name}.yaml", task_config(name, data.resolve(), max_gen_toks, task.system_prompt,
                                                         datasets_cache))


def export_tasks(out_dir: str | Path, nodes: Mapping[str, Mapping[str, Any]], split: str = "test",
                 limit: int | None = None, max_gen_toks: int = 256, prefix: str = "tms_",
                 datasets_cache: Path | None = None) -> dict[str, str]:
    """:func:`export_task` for each ``{benchmark: node}``; returns ``{benchmark: lm-eval task name}`` (prefix + key)."""
    names = {}
    for bench, node in nodes.items():
        names[bench] = f"{prefix}{bench}"
        export_task(out_dir, names[bench], node, split, limit, max_gen_toks, datasets_cache)
    return names


def export_toy_tasks(out_dir: str | Path, skills: tuple[str, ...] = TOY_SKILLS, n_test: int = 200, seed: int = 0,
                     limit: int | None = None, max_gen_toks: int = 40, prefix: str = "tms_") -> dict[str, str]:
    """The toy world's benchmarks (``conf/eval/toy.yaml``'s) as lm-eval tasks ``<prefix><skill>`` in ``out_dir``."""
    return export_tasks(out_dir, {s: toy_node(s, n_test, seed) for s in skills}, "test", limit, max_gen_toks, prefix)


@functools.lru_cache(maxsize=64)
def _task(spec: str) -> Task:
    return instantiate(json.loads(spec))


def process_results(doc: Mapping[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval's per-document metric of an exported task: the tms verifier's score of the (only) completion."""
    task = _task(doc["tms_task"])
    return {SCORE_METRIC.split(",")[0]: float(task.verify(results[0], json.loads(doc["answer"])))}


def main(argv: list[str] | None = None) -> int:
    """``python -m tms.evaluation.lm_eval_tasks OUT_DIR``: export the toy benchmarks; prints the task names."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-gen-toks", type=int, default=40)
    args = p.parse_args(argv)
    names = export_toy_tasks(args.out_dir, n_test=args.n_test, seed=args.seed, limit=args.limit,
                             max_gen_toks=args.max_gen_toks)
    print(f"lm-eval tasks in {Path(args.out_dir).resolve()}: {', '.join(names.values())}")
    print(f"  lm_eval --include_path {Path(args.out_dir).resolve()} --tasks {','.join(names.values())} "
          "--apply_chat_template --model hf --model_args pretrained=<model dir>")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
