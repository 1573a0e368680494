"""The toy world: tokenizer and model build, save/load round trip, the hub-id code path, tasks."""
import torch

from tests.conftest import compose
from tms.models.loading import check_model_source, load_model, load_tokenizer
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
    from tms.models.loading import save_pretrained

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


def qwen2_parameters(arch, vocab: int) -> int:
    """Weights of a Qwen2 decoder with tied embeddings, counted by hand: embeddings, then per layer the q/k/v
    projections (with biases), o (no bias), the gated MLP and two RMSNorms, then the final norm."""
    h, inter, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    kv = arch["num_key_value_heads"] * (h // arch["num_attention_heads"])
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter + 2 * h
    return vocab * h + layers * per_layer + h


def test_base_stage_records_its_build(smoke_cache, smoke_base):
    import math

    from omegaconf import OmegaConf

    from tms.core.io import read_json

    build = OmegaConf.to_container(compose(["experiment=smoke"]).model.build, resolve=True)
    manifests = list((smoke_cache / "base").glob("*/manifest.json"))
    assert len(manifests) == 1
    manifest = read_json(manifests[0])
    assert manifest["status"] == "complete" and manifest["key"]["build"] == build
    info = manifest["info"]
    # the model: the architecture of the build config, with the tokenizer's vocabulary
    vocab = len(load_tokenizer(smoke_base))
    assert 0 < vocab <= build["vocab_size"]
    model = load_model(smoke_base, dtype="float32")
    for key, value in build["architecture"].items():
        assert getattr(model.config, key) == value, key
    assert model.config.vocab_size == vocab
    n_params = qwen2_parameters(build["architecture"], vocab)
    assert info["parameters"] == n_params == sum(p.numel() for p in model.parameters())
    # the pretraining: every skill example (x its repeats) and the native target examples, epochs x batches steps
    n_examples = sum(n * build["repeat"].get(s, 1) for s, n in build["skills"].items()) + sum(build["native"].values())
    pre = build["pretrain"]
    accumulate = math.ceil(pre["effective_batch_size"] / pre["batch_size"])
    steps = pre["epochs"] * math.ceil(math.ceil(n_examples / pre["batch_size"]) / accumulate)
    assert info["train_examples"] == n_examples == 4 * 200 + 1 * 200 + 40  # add x2 (tiny.yaml; smoke keeps it)
    assert info["pretrain"]["dropped_examples"] == {}  # the formula above assumes that no example was dropped
    assert info["pretrain"]["accumulate_grad_batches"] == accumulate
    assert info["pretrain"]["global_steps"] == steps == 33 and not info["pretrain"]["resumed"]
    trajectory = info["pretrain"]["trajectory"]
    assert trajectory["total_steps"] == steps and trajectory["T"] == 1
    assert trajectory["checkpoints"]["1"]["step"] == steps
    counts = read_json(manifests[0].parent / "pretrain" / "mixture_counts.json")
    assert counts == {str(e): {"reference": n_examples} for e in range(pre["epochs"])}
    # the skills the world promises: every pretraining skill and native target, graded on 200 held-out prompts
    accuracy = info["skill_accuracy"]
    assert set(accuracy) == set(build["skills"]) | {f"{s}_native" for s in build["native"]}
    assert set(compose(["experiment=smoke"], config_name="eval").eval.retention) <= set(accuracy)
    for name, value in accuracy.items():
        assert 0.0 <= value <= 1.0 and abs(value * 200 - round(value * 200)) < 1e-6, (name, value)


def test_theta0_never_pretrains_on_a_prompt_the_pipeline_tests_trains_or_validates_on():
    """World v2: the default θ0's pretraining data and every toy split the pipeline uses are disjoint
    (v1 pretrained on half of each benchmark's test prompts)."""
    from hydra.utils import instantiate

    from tms.toy.world import pretraining_task

    cfg = compose([])
    pre = pretraining_task(cfg.model.build)
    seen = {e.prompt for t in pre.tasks.values() for s in ("train", "val") for e in t.examples(s)}
    task = instantiate(cfg.data.task)
    used = {e.prompt for s in ("train", "val", "test") for e in task.examples(s)}
    for name, node in cfg.eval.benchmarks.items():
        used |= {e.prompt for e in instantiate(node).examples("test")}
    assert len(used) > 3000 and not (seen & used)


def test_direct_share_answers_a_share_of_native_examples_with_the_bare_answer():
    from tms.toy.skills import solution_format

    full, mixed = ToyTask("sum", n_train=400, style="native"), ToyTask("sum", n_train=400, style="native",
                                                                      direct_share=0.5)
    a, b = full.examples("train"), mixed.examples("train")
    assert [e.prompt for e in a] == [e.prompt for e in b]  # the share does not change the prompts
    formats = [solution_format(e.reference) for e in b]
    assert set(formats) == {"native", "direct"} and 0.4 < formats.count("direct") / 400 < 0.6
    assert all(mixed.verify(e.reference, e.answer) == 1.0 for e in b)
    assert mixed.examples("test") == full.examples("test")  # held-out splits keep the native references
    assert [solution_format(e.reference) for e in ToyTask("sum", n_train=5).examples("train")] == ["teacher"] * 5
    import pytest

    with pytest.raises(ValueError, match="direct_share"):
        ToyTask("sum", direct_share=0.5)  # the teacher's references are never replaced


def test_a_toy_split_inside_what_theta0_pretrained_on_is_refused(tmp_path):
    from tests.helpers import invalid

    invalid(tmp_path, ["data.task.n_train=5000"], r"data\.task: .*exceed model\.build\.held_out\.sum=3000", base=())
    invalid(tmp_path, ["eval.benchmarks.add.n_test=3001"], r"eval\.benchmarks\.add: .*held_out", base=())
