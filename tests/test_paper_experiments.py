"""conf/experiment/paper/: one composable file per paper setting, equal to what the generator writes."""
import importlib.util


from tests.conftest import REPO


def generator():
    spec = importlib.util.spec_from_file_location("make_paper_experiments", REPO / "tools" / "make_paper_experiments.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: the paper's Table 4 (lr, batch per GPU, grad. acc. on 8 GPUs) and Table 5 (vLLM TP), copied from the paper: the
#: oracle the model configs (the one source the generator reads) are checked against
TABLES_4_5 = {"llama3.2-1b": ("1e-4", 4, 8, 8), "qwen2.5-1.5b": ("1e-4", 4, 8, 4), "qwen2.5-3b": ("2e-5", 2, 16, 8),
              "qwen2.5-7b": ("5e-6", 1, 32, 4), "llama3.1-8b": ("5e-6", 1, 32, 8)}


def test_the_model_configs_hold_tables_4_and_5():
    gen = generator()
    assert {m: row[1:] for m, row in gen.MODELS.items()} == TABLES_4_5
    assert list(gen.MODELS) == list(TABLES_4_5)  # the paper's row order


def test_files_are_what_the_generator_writes():
    gen = generator()
    assert gen.main(["--check"]) == 0
    assert len(gen.settings()) == 5 * 4 * 6


def check_settings(settings) -> None:
    """Compose each (model, target, method) and check it against Tables 4 and 5."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    gen = generator()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for model, target, method in settings:
            lr, bs, _, tp = TABLES_4_5[model]
            cfg = compose("train", overrides=[f"experiment=paper/{gen.name(model, target, method)}"])
            where = (model, target, method)
            assert (cfg.model.name, cfg.data.name, cfg.method.name) == where
            assert cfg.sft.optimizer.lr == float(lr) and cfg.sft.batch_size == bs, where
            assert cfg.sft.effective_batch_size == 256 and cfg.sft.epochs == 2, where
            assert cfg.trainer.precision == "bf16-mixed" and cfg.eval.name == "paper", where
            assert cfg.trainer.strategy._target_ in ("tms.models.strategies.FSDP", "tms.models.strategies.FSDP2"), where
            if method in gen.HARVESTS:
                assert cfg.harvest.backend == "vllm" and cfg.harvest.tensor_parallel_size == tp, where
            if method == "tms":
                assert cfg.sft.num_checkpoints == 10 and cfg.data.target_source.alpha == 0.25, where


def test_every_paper_setting_composes():
    """All 120 (model, target, method) files compose to Tables 4 and 5 (about 10 s)."""
    gen = generator()
    check_settings([(m, t, k) for m in gen.MODELS for t in gen.TARGETS for k in gen.METHODS])
