"""The shared data module: seeded epoch order across ranks, fresh targets per epoch, validation references."""
import pytest

from tests.helpers import assert_epoch_split_covers_every_example_once
from tms.data.datamodule import EpochSampler, PostTrainDataModule
from tms.data.sources import ReferenceSource
from tms.objectives.nll import IGNORE_INDEX
from tms.toy.tasks import ToyTask


@pytest.mark.parametrize("n,world", [(10, 1), (10, 2), (11, 2), (7, 3), (1, 4)])
def test_every_example_once_per_epoch_across_ranks(n, world):
    assert_epoch_split_covers_every_example_once(n, world)


def test_order_is_seeded_and_changes_with_the_epoch():
    a = EpochSampler(50, seed=1, epoch=0).indices()
    assert a == EpochSampler(50, seed=1, epoch=0).indices()
    assert a != EpochSampler(50, seed=1, epoch=1).indices()
    assert a != EpochSampler(50, seed=2, epoch=0).indices()
    assert EpochSampler(50, seed=1, epoch=0, start=5).indices() == a[5:]


def test_batches_mask_prompts_and_use_val_references(smoke_base):
    from tms.models.loading import load_tokenizer

    tok = load_tokenizer(smoke_base)
    task = ToyTask("sum", n_train=20, n_val=6, n_test=0)
    dm = PostTrainDataModule(task, ReferenceSource(), batch_size=4, max_length=64, seed=0).connect(tok)
    batch = next(iter(dm.train_dataloader()))
    for row in range(batch["input_ids"].shape[0]):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        on = labels != IGNORE_INDEX
        text = tok.decode(ids[on])
        assert text.endswith("<|end|>") and "<|assistant|>" not in text
        first = int(on.nonzero()[0])
        assert tok.decode(ids[:first]).endswith("<|assistant|>")
    val = list(dm.val_dataloader())
    assert sum(b["input_ids"].shape[0] for b in val) == 6


def test_long_prompts_are_dropped_with_a_warning_and_all_dropped_is_an_error(smoke_base, caplog):
    from tms.models.loading import load_tokenizer

    tok = load_tokenizer(smoke_base)
    task = ToyTask("sum", n_train=20, n_val=0, n_test=0)
    with pytest.raises(ValueError, match="max_length"):
        PostTrainDataModule(task, batch_size=4, max_length=5).connect(tok)
    dm = PostTrainDataModule(task, batch_size=4, max_length=14).connect(tok)  # long completions are truncated
    items = dm.draw_epoch(0)
    assert all(len(ids) <= 14 and len(ids) > n for ids, n in items)
