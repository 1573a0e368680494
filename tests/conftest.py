"""Shared test setup: offline by construction, small thread counts."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def compose(overrides=(), config_name="train"):
    """The real Hydra config of the repo with ``overrides`` (what ``python train.py ...`` would get)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    """A stage cache holding the smoke toy world's θ0 (built once per test session)."""
    from tms.stages.base_model import resolve_base

    cache = tmp_path_factory.mktemp("tms_cache")
    cfg = compose(["experiment=smoke", f"cache_dir={cache}"])
    resolve_base(cfg)
    return cache


@pytest.fixture(scope="session")
def smoke_base(smoke_cache):
    """Path of the smoke θ0 (a saved HF directory)."""
    from tms.stages.base_model import resolve_base

    return resolve_base(compose(["experiment=smoke", f"cache_dir={smoke_cache}"])).path
