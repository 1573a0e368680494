"""Validate the composed config and its inputs before any compute.

Every error is a :class:`ConfigError` that names the config key (or the file) and says how to fix it.
``validate(cfg)`` is called by the pipeline before the first stage (before θ0 is built or loaded), so
an invalid run fails in seconds and writes nothing. It first makes the hardware-dependent choices in place
(:func:`tms.config.hardware.resolve_hardware`: ``trainer=auto``, ``harvest.backend=auto``), then checks

* every key a stage reads, with its type and range: ``model`` (dtype, attention, the LoRA adapters), ``data``, ``sft``
  (and the toy world's ``model.build.pretrain``) with the optimiser's and the scheduler's arguments
  (both are built once on a dummy parameter), ``trainer`` (keys tms sets itself or cannot work with,
  keys ``L.Trainer`` does not take, accelerator, devices, precision, strategy), ``logger``, ``harvest``
  (with the vLLM backend's sampling limits), the ``rl`` block (:func:`tms.methods.rl_config.validate_rl`)
  and the evaluation suite (:func:`tms.config.eval.check_suite`);
* the inputs (:mod:`tms.config.inputs`): the model's source and the cache directory, batch sizes and step
  counts against the training set, prompt lengths against ``data.max_length`` and the model's context,
  credentials.
"""
from __future__ import annotations

from omegaconf import DictConfig

from tms.config.eval import check_suite
from tms.config.generation import check_harvest
from tms.config.hardware import resolve_hardware
from tms.config.inputs import (
    check_batch_sizes,
    check_cache_dir,
    check_lengths,
    check_lora,
    check_model,
    check_no_secrets,
    check_toy_held_out,
)
from tms.config.training import (
    check_optimizer,
    check_scheduler,
    check_train_block,
    check_trainer,
    stage1_steps,
)
from tms.core.checks import build, check_target, integer, known_keys, number, require
from tms.core.distributed import accumulation, world_size
from tms.core.errors import ConfigError
from tms.methods.rl_config import rl_learning_rate, rollout_steps, validate_rl

KINDS = ("sft", "student", "rl")


# -- the entry point ------------------------------------------------------------------------------------------------
def validate(cfg: DictConfig) -> None:
    """Resolve ``auto`` choices from the machine, then check types, ranges, files and cross-field constraints of a
    pipeline config and its inputs."""
    resolve_hardware(cfg)  # trainer=auto, harvest.backend=auto: before any weights are loaded
    kind = cfg.method.get("kind")
    require(kind in KINDS, "method.kind", f"must be one of {KINDS}, got {kind!r}")
    integer("seed", cfg.seed, minimum=0)
    check_objective(cfg.get("objective"))
    check_log_samples(cfg.get("log_samples"))
    check_no_secrets(cfg)
    check_cache_dir(cfg)
    check_model(cfg)
    check_toy_held_out(cfg)
    check_trainer(cfg.trainer)
    check_lora(cfg)  # after the trainer: LoRA refuses FSDP1
    if cfg.get("logger"):
        check_target(cfg.logger, "logger")
    for name, node in (cfg.get("callbacks") or {}).items():  # the callbacks group: each a Lightning callback node
        check_target(node, f"callbacks.{name}")
    integer("data.max_length", cfg.data.max_length, minimum=2)
    integer("data.max_new_tokens", cfg.data.max_new_tokens)
    integer("data.train_limit", cfg.data.get("train_limit"), optional=True)
    integer("data.val_limit", cfg.data.get("val_limit"), minimum=0, optional=True)
    T = cfg.sft.num_checkpoints
    integer("sft.num_checkpoints", T)
    check_train_block(cfg.sft, "sft")
    optimizer = check_optimizer(cfg.sft.optimizer, "sft.optimizer")
    toy = not cfg.model.get("name_or_path") and cfg.model.get("gguf") is None
    pre = cfg.model.build.get("pretrain") if toy else None
    if pre is not None:  # the toy θ0 trains with these
        check_train_block(pre, "model.build.pretrain")
        check_scheduler(pre.get("scheduler"), "model.build.pretrain.scheduler",
                        check_optimizer(pre.get("optimizer"), "model.build.pretrain.optimizer"), 100)
    if kind == "student":
        integer("student.num_checkpoints", cfg.student.num_checkpoints)
    ts: list[int] = []
    if kind == "student":
        source = build(cfg.data.target_source, "data.target_source")
        try:
            ts = source.required_checkpoints(int(T))
        except ValueError as err:
            raise ConfigError(str(err)) from err
    harvests = bool(ts) or cfg.harvest.get("checkpoints") is not None  # a student's targets, or python harvest.py
    if harvests:
        check_harvest(cfg, int(T))
    if cfg.get("eval") is not None:  # after the harvest: both may check the vLLM install, the limits come first
        check_suite(cfg)

    task = build(cfg.data.task, "data.task")
    try:
        train = task.examples("train", cfg.data.get("train_limit"))
    except ValueError as err:  # a data file that is empty, unreadable or has missing or mistyped fields
        raise ConfigError(f"data.task: {err}") from err
    require(len(train) > 0, "data.task", f"the train split of {task.name!r} is empty")
    world = world_size(cfg.trainer)
    if kind == "rl":  # the rl block, its budget against the prompts, and the optimiser at the RL learning rate
        config = validate_rl(cfg, len(train))
        lr_key = "rl.lr" if cfg.rl.get("lr") is not None else "sft.optimizer.lr x rl.lr_scale (the RL learning rate)"
        optimizer = check_optimizer(cfg.sft.optimizer, "sft.optimizer", lr=rl_learning_rate(cfg), lr_key=lr_key)
        steps = rollout_steps(cfg, len(train), world) * config.num_iterations
    else:
        check_batch_sizes(cfg, len(train), world)
        steps = stage1_steps(cfg, len(train), world, accumulation(cfg.sft, cfg.trainer))
    check_scheduler(cfg.sft.get("scheduler"), "sft.scheduler", optimizer, steps)
    if cfg.harvest.get("prompt_subset") is not None and harvests:
        require(int(cfg.harvest.prompt_subset) <= len(train), "harvest.prompt_subset",
                f"{cfg.harvest.prompt_subset} is larger than the {len(train)} training prompts")
    check_lengths(cfg, task, train)


def check_log_samples(node: DictConfig | None) -> None:
    """``log_samples``: how many completions the W&B tables show (eval, harvest, rollouts: >= 0; rollout_every >= 0)."""
    if node is None:
        return
    keys = ("eval", "harvest", "rollouts", "rollout_every")
    known_keys(node, "log_samples", keys)
    for key in keys:
        integer(f"log_samples.{key}", node.get(key, 0), minimum=0)


def check_objective(node: DictConfig | None) -> None:
    """``objective``: ``metric`` null or a results key, ``floor`` null or a number, ``floor_metric`` a results key."""
    if node is None:
        return
    known_keys(node, "objective", ("metric", "floor", "floor_metric"))
    for key in ("metric", "floor_metric"):
        value = node.get(key)
        require(value is None or (isinstance(value, str) and value.strip() != ""), f"objective.{key}",
                f"must be null or a key of results.json (e.g. target, retention_mean, scores.add), got {value!r}")
    number("objective.floor", node.get("floor"), optional=True)
