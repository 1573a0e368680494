"""The toy world: tokenizer and model build, save/load round trip, the hub-id code path, tasks."""
import torch

from tms.models import check_model_source, load_model, load_tokenizer
from tms.toy.tasks import ToyTask


def test_toy_tasks_are_deterministic_disjoint_and_self_verifying():
    for skill in ["add", "reverse", "max", "sort", "sum", "chain", "sub"]:
        a, b = ToyTask(skill, n_train=300, n_val=50, n_test=50, seed=3), ToyTask(skill, n_train=300, n_val=50, n_test=50, seed=3)
        assert [e.prompt for e in a.examples("train")] == [e.prompt for e in b.examples("train")]
        splits = [{e.prompt for e in a.examples(s)} for s in ("train", "val", "test")]
        assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])
        assert all(a.verify(e.reference, e.answer) == 1.0 for s in ("train", "val", "test") for e in a.examples(s))
        other = ToyTask(skill, n_train=300, n_val=50, n_test=50, seed=4)
        assert [e.prompt for e in other.examples("test")] != [e.prompt for e in a.examples("test")]
    # the test split does not depend on the train size
    assert ToyTask("sum", n_train=10, n_test=40).examples("test") == ToyTask("sum", n_train=500, n_test=40).examples("test")


def test_both_solution_styles_verify_and_wrong_answers_do_not():
    teacher, native = ToyTask("sum", style="teacher", n_train=20), ToyTask("sum", style="native", n_train=20)
    for et, en in zip(teacher.examples("train"), native.examples("train")):
        assert et.prompt == en.prompt and et.reference != en.reference
        assert teacher.verify(en.reference, et.answer) == 1.0  # the native style is a valid solution
        assert teacher.verify(et.reference + "1", et.answer) == 0.0
    rev = ToyTask("reverse", n_train=5)
    e = rev.examples("train")[0]
    assert rev.verify(" " + e.reference + " ", e.answer) == 1.0 and rev.verify(e.reference[::-1] + "x", e.answer) == 0.0


def test_saved_base_loads_through_the_hub_id_code_path(smoke_base):
    check_model_source(smoke_base)
    tok = load_tokenizer(smoke_base)
    assert type(tok).__name__ == "Qwen2Tokenizer"  # same tokenizer class as Qwen/Qwen2.5-*-Instruct
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<pad>" and tok.padding_side == "left"
    for text in ["sum 57 82 32", "57+82=139 139+32=171 answer 171", "reverse q w e"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    digits = tok.convert_ids_to_tokens(tok("12345", add_special_tokens=False)["input_ids"])
    assert digits == list("12345")  # digits are split
    model = load_model(smoke_base, dtype="float32")
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.tie_word_embeddings


def test_save_and_reload_round_trip_gives_identical_logits(smoke_base, tmp_path):
    from tms.models import save_pretrained

    tok, model = load_tokenizer(smoke_base), load_model(smoke_base, dtype="float32")
    save_pretrained(model, tok, tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").is_file() and (tmp_path / "copy" / "config.json").is_file()
    again = load_model(str(tmp_path / "copy"), dtype="float32")
    ids = torch.tensor([tok("add 12 30", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert load_tokenizer(str(tmp_path / "copy")).get_vocab() == tok.get_vocab()


def test_missing_local_model_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="model.name_or_path"):
        check_model_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        check_model_source(str(tmp_path / "empty"))


def test_base_stage_records_its_build(smoke_cache):
    from tms.io import read_json

    manifests = list((smoke_cache / "base").glob("*/manifest.json"))
    assert len(manifests) == 1
    info = read_json(manifests[0])["info"]
    assert info["parameters"] > 0 and info["pretrain"]["global_steps"] > 0
