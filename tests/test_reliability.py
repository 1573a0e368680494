"""Reliability: exact resume after a crash, atomic stages, input validation, the non-finite guard,
safe defaults (weights_only, trust_remote_code, no credentials written) and determinism.

The SIGKILL test of the whole pipeline is ``slow``; the default suite checks exact resume on Stage 1 alone
and determinism on the whole pipeline. The config checks are in test_validation.py.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, compose
from tests.helpers import invalid
from tms.core.cache import Stage
from tms.methods.sft import SFTModule
from tms.core.errors import ConfigError

TOY_FLAGS = ["experiment=smoke", "trainer.checkpoint_every_n_steps=1"]


# -- helpers ---------------------------------------------------------------------------------
class Crash(RuntimeError):
    """A simulated crash (raised from inside training)."""


def fingerprint(batch: dict) -> int:
    ids = batch["input_ids"]
    return int((ids * torch.arange(1, ids.shape[1] + 1)).sum()) * 1_000 + int(ids.shape[0])


class Probe(SFTModule):
    """SFT that records a fingerprint of every micro-batch it trains on, and can crash before
    optimiser step ``crash_at`` or poison step ``poison_at`` (``logits``, ``loss`` or ``grad``)."""

    def __init__(self, *args, crash_at=None, poison=None, poison_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_at, self.poison, self.poison_at = crash_at, poison, poison_at
        self.seen: list[int] = []

    def poisoned(self, mode: str) -> bool:
        return self.poison == mode and self.global_step == self.poison_at

    def on_train_batch_start(self, batch, batch_idx):
        if self.crash_at is not None and self.global_step == self.crash_at:
            raise Crash(f"crash before step {self.crash_at}")
        self.seen.append(fingerprint(batch))

    def batch_logprobs(self, batch, model=None, temperature=1.0, entropy=False):
        logp, mask, ent = super().batch_logprobs(batch, model, temperature, entropy)
        return (logp * float("nan") if self.training and self.poisoned("logits") else logp), mask, ent

    def training_step(self, batch, batch_idx):
        if self.poisoned("grad"):
            p = next(self.model.parameters())
            handle = p.register_hook(lambda g: (handle.remove(), torch.full_like(g, float("nan")))[1])
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.poisoned("loss") else loss


def train_sft(base: str, out: Path, *, epochs: int = 2, acc: int = 2, seed: int = 0, **probe):
    """Stage-1-style training of the smoke θ0 (with dropout, so the RNG state matters) through tms.training.loop.fit."""
    from hydra.utils import instantiate

    from tms.data.datamodule import PostTrainDataModule
    from tms.data.sources import ReferenceSource
    from tms.models.loading import load_tokenizer
    from tms.training.loop import fit

    cfg = compose([*TOY_FLAGS, f"sft.epochs={epochs}", f"sft.accumulate_grad_batches={acc}", f"seed={seed}"])
    tok = load_tokenizer(base)
    dm = PostTrainDataModule(instantiate(cfg.data.task), ReferenceSource(), batch_size=int(cfg.sft.batch_size),
                             max_length=int(cfg.data.max_length), seed=seed).connect(tok)
    module = Probe(base, optimizer=instantiate(cfg.sft.optimizer), scheduler=instantiate(cfg.sft.scheduler),
                   model_kwargs={"dtype": "float32", "attention_dropout": 0.2}, **probe)
    info = fit(module, dm, tok, out, cfg.sft, cfg.trainer, None, seed=seed, num_checkpoints=3, name="sft")
    return module, info


def weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    assert (ckpt_dir / "model.safetensors").is_file() and not list(ckpt_dir.glob("*.bin"))
    return load_file(str(ckpt_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


# -- exact resume ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(smoke_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    module, info = train_sft(smoke_base, out)
    return out, module.seen, info


@pytest.mark.parametrize("crash_at", [1, 3, 4], ids=["epoch0-mid", "epoch0-end", "epoch1-mid"])
def test_resume_after_a_crash_is_exact(smoke_base, uninterrupted, tmp_path, crash_at):
    """2 epochs x 6 micro-batches, accumulation 2, checkpoint every step: a crash after step k and a
    re-run train exactly the batches of the uninterrupted run and end with bitwise equal weights."""
    full_dir, full_seen, full_info = uninterrupted
    with pytest.raises(Crash):
        train_sft(smoke_base, tmp_path, crash_at=crash_at)
    assert (tmp_path / "lightning" / "last.ckpt").is_file() and not (tmp_path / "fit.json").exists()
    ckpt = torch.load(tmp_path / "lightning" / "last.ckpt", weights_only=True)
    consumed = 2 * crash_at  # micro-batches trained before the crash (accumulation 2)
    epoch = (consumed - 1) // 6  # 6 micro-batches per epoch; a checkpoint at an epoch's last batch belongs to it
    assert ckpt["global_step"] == crash_at
    assert ckpt["PostTrainDataModule"]["position"] == {"epoch": epoch, "batches": consumed - 6 * epoch}
    assert any("RNGState" in key for key in ckpt["callbacks"])
    resumed, info = train_sft(smoke_base, tmp_path)
    assert info["resumed"] and info["global_steps"] == full_info["global_steps"]
    assert resumed.seen == full_seen[consumed:], "the resumed run must continue with the next batch"
    for t in (1, 2, 3):
        assert_same_weights(full_dir / "checkpoints" / f"t={t:02d}", tmp_path / "checkpoints" / f"t={t:02d}")
    assert json.loads((tmp_path / "checkpoints" / "trajectory.json").read_text()) == \
        json.loads((full_dir / "checkpoints" / "trajectory.json").read_text())
    assert not (tmp_path / "lightning").exists()


def test_a_finished_fit_is_not_trained_again(smoke_base, uninterrupted, tmp_path):
    """Killed after training but before the stage was published: fit.json short-cuts the re-run."""
    full_dir, _, full_info = uninterrupted
    shutil.copytree(full_dir, tmp_path, dirs_exist_ok=True)
    module, info = train_sft(smoke_base, tmp_path)
    assert module.seen == [] and info == json.loads((full_dir / "fit.json").read_text())


# -- non-finite guard ------------------------------------------------------------------------
@pytest.mark.parametrize("mode,what", [("logits", "training loss"), ("loss", "training loss"),
                                       ("grad", "gradient norm")])
def test_non_finite_values_stop_training_with_a_debug_checkpoint(smoke_base, tmp_path, mode, what):
    with pytest.raises(FloatingPointError, match=rf"non-finite {what}.*global step 2") as err:
        module, _ = train_sft(smoke_base, tmp_path, epochs=1, acc=1, poison=mode, poison_at=2)
    path = tmp_path / "debug" / "nonfinite-step2.ckpt"
    assert str(path) in str(err.value) and path.is_file()
    ckpt = torch.load(path, weights_only=True)
    bad = ckpt["nonfinite"]
    assert ckpt["global_step"] == 2 and bad["global_step"] == 2 and bad["what"] == what and bad["batch_idx"] == 2
    assert set(bad["batch"]) >= {"input_ids", "attention_mask", "labels"}
    # the saved state is that of before the bad step: resuming from it replays the same batch
    assert ckpt["state_dict"] and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not (tmp_path / "fit.json").exists()


# -- atomic stages and write errors ----------------------------------------------------------
def test_a_failed_stage_is_not_published_and_the_rerun_resumes_from_partial(tmp_path):
    stage = Stage(tmp_path, "demo", {"x": 1})
    with pytest.raises(Crash):
        with stage.lock(), stage.build(seed=0) as (out, info):
            (out / "done-part.txt").write_text("kept")
            (out / "t=001").mkdir()
            (out / "t=001" / "shard-00001.parquet.tmp").write_text("half a shard")
            (out / ".model.tmp-12345").mkdir()
            (out / ".trajectory.json.tmp-999").write_text("{")
            raise Crash()
    assert not stage.dir.exists() and not stage.done and stage.partial.is_dir()
    with stage.lock(), stage.build(seed=0) as (out, info):
        assert (out / "done-part.txt").read_text() == "kept"  # resumed from the partial directory
        left = sorted(p.name for p in out.rglob("*"))
        assert left == ["done-part.txt", "manifest.partial.json", "t=001"], left  # stale temporaries removed
        info["ok"] = True
    assert stage.done and not stage.partial.exists() and stage.manifest()["info"] == {"ok": True}


def test_checkpoint_write_errors_surface_and_keep_the_previous_checkpoint(tmp_path, monkeypatch):
    from tms.training.resume import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "lightning" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_json_write_errors_surface(tmp_path, monkeypatch):
    from tms.core.io import write_json

    write_json(tmp_path / "a.json", {"v": 1})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError, match="No space left"):
        write_json(tmp_path / "a.json", {"v": 2})
    monkeypatch.undo()
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_cache_is_an_error(tmp_path):
    (tmp_path / "demo").mkdir()
    os.chmod(tmp_path / "demo", 0o555)
    try:
        with pytest.raises(PermissionError):
            with Stage(tmp_path, "demo", {"x": 1}).build() as _:
                pass
    finally:
        os.chmod(tmp_path / "demo", 0o755)


# -- validation of input files (the config checks are in test_validation.py) -------------------
def gsm8k_rows(n: int = 20) -> list[dict]:
    return [{"question": f"{i}+1?", "answer": f"{i} plus 1.\n#### {i + 1}"} for i in range(n)]


def gsm8k(tmp_path: Path, rows=None, text: str | None = None) -> list[str]:
    path = tmp_path / "gsm8k_train.jsonl"
    path.write_text(text if text is not None else "".join(json.dumps(r) + "\n" for r in rows))
    return ["data=gsm8k", f"data.task.train_source={path}", f"data.task.test_source={path}", "data.task.n_val=2",
            "data.max_length=64", "data.max_new_tokens=24", "sft.batch_size=4", "sft.effective_batch_size=4",
            "sft.epochs=1", "sft.num_checkpoints=2"]


def invalid_gsm8k(tmp_path: Path, overrides, match: str) -> str:
    return invalid(tmp_path, overrides, match, base=("eval=paper",))


def test_gsm8k_file_missing_a_field(tmp_path):
    rows = gsm8k_rows()
    del rows[3]["answer"]
    invalid_gsm8k(tmp_path, gsm8k(tmp_path, rows), r"^data.task: .*gsm8k_train.jsonl: row 3 is missing required field\(s\) \['answer'\]")


def test_gsm8k_file_with_a_mistyped_field(tmp_path):
    rows = gsm8k_rows()
    rows[5]["answer"] = 6
    invalid_gsm8k(tmp_path, gsm8k(tmp_path, rows), r"^data.task: .*gsm8k_train.jsonl: row 5 field 'answer' has type int")


@pytest.mark.parametrize("text,match", [("", r"gsm8k_train.jsonl is empty"),
                                        ('{"question": "1+1?", "answer": "2\n', r"could not read data file .*gsm8k_train.jsonl")])
def test_empty_or_malformed_data_file(tmp_path, text, match):
    invalid_gsm8k(tmp_path, gsm8k(tmp_path, text=text), rf"^data.task: .*{match}")


def test_a_prompt_longer_than_a_local_models_context(smoke_base, tmp_path):
    rows = gsm8k_rows()
    rows[4]["question"] = "How many apples are there? " * 40
    overrides = gsm8k(tmp_path, rows) + [f"model.name_or_path={smoke_base}"]
    invalid_gsm8k(tmp_path, overrides, r"^harvest.max_new_tokens: the prompt of train example 'gsm8k-train-000004' .* "
                                 r"exceeds the model's context of 128 \(.*config.json\)")


# -- safe defaults -----------------------------------------------------------------------------
class Payload:
    """Unpickling this runs ``os.mkdir(path)``: the stand-in for code planted in a tampered checkpoint."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_tampered_resume_checkpoint_is_refused_without_running_its_code(smoke_base, tmp_path):
    """The only pickle tms reads is the resume checkpoint (``lightning/last.ckpt``): it is loaded weights-only, so a
    checkpoint carrying code is refused and the code never runs."""
    import pickle

    ran = tmp_path / "payload-ran"
    (tmp_path / "lightning").mkdir()
    checkpoint = {"epoch": 0, "global_step": 1, "state_dict": {}, "payload": Payload(ran)}
    torch.save(checkpoint, tmp_path / "lightning" / "last.ckpt")
    with pytest.raises(Exception) as err:
        train_sft(smoke_base, tmp_path, epochs=1, acc=1)
    assert not ran.exists(), "unpickling the resume checkpoint ran its code"
    assert isinstance(err.value, pickle.UnpicklingError) and "Weights only load failed" in str(err.value), err.value


def remote_code_model(base: str, dest: Path, marker: Path) -> Path:
    """A copy of θ0 whose config and tokenizer config point (``auto_map``) at Python files that create ``marker``."""
    shutil.copytree(base, dest)
    plant = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (dest / "evil_config.py").write_text(plant + "from transformers import Qwen2Config\n\n\n"
                                         "class EvilConfig(Qwen2Config):\n    pass\n")
    (dest / "evil_model.py").write_text(plant + "from transformers import Qwen2ForCausalLM\n\n"
                                        "from .evil_config import EvilConfig\n\n\n"
                                        "class EvilModel(Qwen2ForCausalLM):\n    config_class = EvilConfig\n")
    (dest / "evil_tokenizer.py").write_text(plant + "from transformers import Qwen2Tokenizer\n\n\n"
                                            "class EvilTokenizer(Qwen2Tokenizer):\n    pass\n")
    for name, auto_map in [("config.json", {"AutoConfig": "evil_config.EvilConfig",
                                            "AutoModelForCausalLM": "evil_model.EvilModel"}),
                           ("tokenizer_config.json", {"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]})]:
        data = json.loads((dest / name).read_text())
        (dest / name).write_text(json.dumps({**data, "auto_map": auto_map}))
    return dest


def test_remote_code_in_a_model_directory_runs_only_when_asked(smoke_base, tmp_path, monkeypatch):
    """A model directory that ships code (``auto_map``): every loader, and the generator built from each packaged
    model config, use the library's own Qwen2 classes and never import that code; asking for it runs it."""
    import sys

    import transformers.dynamic_module_utils as dynamic

    from tms.generation.factory import make_generator
    from tms.generation.hf import HFGenerator
    from tms.models.loading import load_model, load_tokenizer
    from tms.stages.common import model_kwargs

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # where transformers copies the code
    monkeypatch.setattr(sys, "path", list(sys.path))
    ran = tmp_path / "remote-code-ran"
    path = str(remote_code_model(smoke_base, tmp_path / "remote", ran))
    assert type(load_model(path, dtype="float32")).__name__ == "Qwen2ForCausalLM"
    assert type(load_tokenizer(path)).__name__ == "Qwen2Tokenizer"
    HFGenerator.from_pretrained(path, device="cpu", dtype="float32")
    for f in sorted((REPO / "conf" / "model").glob("*.yaml")):
        cfg = compose([f"model={f.stem}"])
        assert model_kwargs(cfg)["trust_remote_code"] is False, f.name
        make_generator("hf", path, cfg.harvest, cfg.model, seed=0)
    assert not ran.exists(), "remote code ran without trust_remote_code"
    # the planted code is live: with the flag on, tms's loaders import and run it
    assert type(load_tokenizer(path, trust_remote_code=True)).__name__ == "EvilTokenizer" and ran.exists()
    ran.unlink()
    assert type(load_model(path, dtype="float32", trust_remote_code=True)).__name__ == "EvilModel" and ran.exists()


SENTINEL = "sk-test-secret-0123456789"


def test_credentials_are_never_written(tmp_path, monkeypatch):
    """Manifests, JSON outputs, the config dump and the W&B logger config hold no credential."""
    from omegaconf import OmegaConf

    from tms.cli import common as cli
    from tms.core.io import write_json
    from tms.training.loop import build_logger
    from tms.config.validate import validate

    monkeypatch.setenv("WANDB_API_KEY", SENTINEL)
    monkeypatch.setenv("HF_TOKEN", SENTINEL[::-1])
    monkeypatch.setenv("WANDB_MODE", "offline")
    flags = ["experiment=smoke", f"cache_dir={tmp_path / 'cache'}", "logger=wandb"]
    with pytest.raises(ConfigError, match="^logger.api_key: looks like a credential"):
        validate(compose([*flags, "+logger.api_key=${oc.env:WANDB_API_KEY}"]))  # loggers read the environment
    cfg = compose([*flags, "+data.hf_token=${oc.env:HF_TOKEN}", "+data.note=key ${oc.env:WANDB_API_KEY}"])
    validate(cfg)  # interpolated credentials are accepted outside the logger ...
    stage = Stage(tmp_path / "cache", "demo", {"data": OmegaConf.to_container(cfg.data, resolve=True)})
    with stage.lock(), stage.build() as (out, info):
        info["token"] = SENTINEL
    write_json(tmp_path / "results.json", {"hf_token": "x" * 10, "note": f"key={SENTINEL}"})
    monkeypatch.setattr(cli, "run_dir", lambda: tmp_path / "run")
    cli.setup(cfg)
    logger = build_logger(cfg.logger, tmp_path / "wandb", "sft")
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert {"manifest.json", "results.json", "config.resolved.yaml", "seed.json"} <= {p.name for p in written}
    for p in written:  # ... and redacted from everything written
        text = p.read_text()
        assert SENTINEL not in text and SENTINEL[::-1] not in text, p
    assert "<redacted>" in (stage.dir / "manifest.json").read_text()
    init = json.dumps(getattr(logger, "_wandb_init", {}), default=str)
    assert "api_key" not in init and SENTINEL not in init


# -- determinism -----------------------------------------------------------------------------
def loss_column(stage_dir: Path) -> list[str]:
    import csv

    with (stage_dir / "logs" / "metrics.csv").open() as fh:
        return [row["train/loss"] for row in csv.DictReader(fh) if row.get("train/loss")]


def seeded_cache(smoke_cache: Path, dest: Path) -> Path:
    """A fresh cache holding only the session's toy θ0 (so the test does not rebuild it)."""
    shutil.copytree(smoke_cache / "base", dest / "base", ignore=shutil.ignore_patterns("*.lock"))
    return dest


# -- the whole pipeline: SIGKILL at several points, determinism (slow) -------------------------
PIPELINE = ["experiment=smoke", "trainer.checkpoint_every_n_steps=1", "sft.epochs=2"]


def pipeline_outputs(run_dir: Path) -> dict:
    """What a pipeline run produced: buffer rows, the student's mixture counts and weights, SFT weights."""
    from tms.data.buffer import read_buffer

    pipe = json.loads((run_dir / "pipeline.json").read_text())
    rows = [r for d in pipe["stages"]["harvest"].values() for r in read_buffer(d).to_pylist()]
    student = Path(pipe["stages"]["student"])
    return {"rows": rows, "mixture_counts": json.loads((student / "mixture_counts.json").read_text()),
            "student": weights(Path(pipe["final_model"])),
            "sft": [weights(Path(pipe["stages"]["sft"]) / "checkpoints" / f"t={t:02d}") for t in (1, 2, 3)],
            "results": json.loads((run_dir / "results.json").read_text())["rows"], "pipe": pipe}


def assert_same_outputs(a: dict, b: dict) -> None:
    assert a["rows"] == b["rows"] and len(a["rows"]) == 3 * 96
    assert a["mixture_counts"] == b["mixture_counts"]
    for wa, wb in zip([a["student"], *a["sft"]], [b["student"], *b["sft"]]):
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["results"] == b["results"]


def train_command(cache: Path, run_dir: Path) -> list[str]:
    import sys

    return [sys.executable, "train.py", *PIPELINE, f"cache_dir={cache}", f"hydra.run.dir={run_dir}"]


def kill_when(cmd: list[str], pattern: str, cache: Path, log: Path, timeout: float = 300) -> Path:
    """Start ``cmd``; SIGKILL it as soon as a file matching ``cache/pattern`` exists; returns that file."""
    import signal
    import subprocess
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = sorted(cache.glob(pattern))
        if found:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {pattern} appeared; see {log}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"{pattern} did not appear within {timeout}s; see {log}")


@pytest.mark.slow
def test_pipeline_killed_mid_sft_harvest_and_student_resumes_to_identical_outputs(smoke_cache, tmp_path):
    """SIGKILL the same `python train.py` command mid-SFT, mid-harvest and mid-student, re-run it each time;
    the outputs equal those of an uninterrupted run with the same seed, bitwise (CPU, same thread count)."""
    import subprocess

    from tms.pipeline import run

    run(compose([*PIPELINE, f"cache_dir={seeded_cache(smoke_cache, tmp_path / 'ref')}"]), tmp_path / "ref_run")
    ref = pipeline_outputs(tmp_path / "ref_run")
    cache, run_dir, log = seeded_cache(smoke_cache, tmp_path / "killed"), tmp_path / "killed_run", tmp_path / "train.log"
    cmd = train_command(cache, run_dir)

    kill_when(cmd, "sft/*.partial/lightning/last.ckpt", cache, log)
    assert not list(cache.glob("sft/*/manifest.json")), "killed after SFT finished: no mid-SFT kill"
    shard = kill_when(cmd, "harvest/*.partial/t=*/shard-00000.parquet", cache, log)
    assert list(cache.glob("sft/*/manifest.json")), "SFT did not finish after the restart"
    assert len(list(shard.parent.glob("shard-*.parquet"))) < 3, "killed after the harvest of that checkpoint ended"
    kill_when(cmd, "student/*.partial/lightning/last.ckpt", cache, log)
    assert not list(cache.glob("student/*/manifest.json")), "killed after the student finished: no mid-student kill"
    with log.open("ab") as out:
        subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=True)

    got = pipeline_outputs(run_dir)
    assert_same_outputs(got, ref)
    manifests = {s: json.loads((Path(got["pipe"]["stages"][s]) / "manifest.json").read_text())["info"]
                 for s in ("sft", "student")}
    assert manifests["sft"]["resumed"] and manifests["student"]["resumed"]
    assert not list(cache.glob("*/*.partial")), "every stage must be published"


def test_whole_pipeline_is_deterministic_given_the_seed(smoke_cache, tmp_path):
    """Two runs with seed 0 into separate caches: identical buffers, loss curves, student weights and results;
    seed 1 differs."""
    from tms.pipeline import run

    def pipeline(name: str, seed: int) -> dict:
        cfg = compose([*PIPELINE, f"cache_dir={seeded_cache(smoke_cache, tmp_path / name)}", f"seed={seed}"])
        run(cfg, tmp_path / f"{name}_run")
        return pipeline_outputs(tmp_path / f"{name}_run")

    a, b, c = pipeline("a", 0), pipeline("b", 0), pipeline("c", 1)
    assert_same_outputs(a, b)
    losses = {run: {stage: loss_column(Path(out["pipe"]["stages"][stage])) for stage in ("sft", "student")}
              for run, out in (("a", a), ("b", b), ("c", c))}
    assert losses["a"] == losses["b"]
    assert len(losses["a"]["sft"]) == 2 * 96 // 16 and losses["a"]["student"]  # 2 epochs of 6 steps; logged
    assert losses["a"]["sft"] != losses["c"]["sft"] and losses["a"]["student"] != losses["c"]["student"]
    assert a["rows"] != c["rows"] and a["mixture_counts"] != c["mixture_counts"]
    assert any(not torch.equal(a["student"][k], c["student"][k]) for k in a["student"])
    assert any(not torch.equal(a["sft"][-1][k], c["sft"][-1][k]) for k in a["sft"][-1])
