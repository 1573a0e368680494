"""The stage cache knows the code, verifies what it reuses, repairs harvest shards and is listed / collected.

The smoke TMS pipeline is built once (``built``); each test works on a copy of that cache. A code
change is simulated by changing one file's digest in :mod:`tms.core.code_identity` (the digests of the
real files are computed once per process, so edits of other files by other people do not leak in);
``test_identity_hashes_the_bytes_of_the_files`` edits a real copy of the package instead.
"""
import fcntl
import functools
import logging
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import compose
from tms.core import code_identity
from tms.data.buffer import read_buffer
from tms.core.cache import Stage, StageCorrupt, cli, verify
from tms.core.io import read_json

KINDS = ("base", "sft", "student", "harvest", "rl", "eval", "gguf")


def run_pipeline(cache, run_dir, *overrides):
    from tms.pipeline import run

    return run(compose(["experiment=smoke", f"cache_dir={cache}", *overrides]), run_dir)


@pytest.fixture(scope="module")
def built(smoke_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_test")
    cache = root / "cache"
    cache.mkdir()
    shutil.copytree(smoke_cache / "base", cache / "base")  # θ0 is built once per session
    run = root / "runs" / "2025-01-01" / "12-00-00_tms"
    results = run_pipeline(cache, run)
    return SimpleNamespace(cache=cache, run=run, pipe=read_json(run / "pipeline.json"), results=results)


def copy_of(built, tmp_path) -> Path:
    shutil.copytree(built.cache, tmp_path / "cache")
    return tmp_path / "cache"


def stage_dirs(cache: Path) -> dict[str, set[str]]:
    return {k.name: {p.name for p in k.iterdir() if p.is_dir()} for k in cache.iterdir() if k.is_dir()}


def edit(monkeypatch, rel: str) -> None:
    """As if ``tms/<rel>`` had been edited: its digest changes, every other file keeps its own."""
    real = code_identity.file_digest
    monkeypatch.setattr(code_identity, "file_digest", lambda r: "0" * 16 if r == rel else real(r))


def relative(stages: dict, cache: Path) -> dict:
    """A pipeline.json's stage directories, relative to the cache (the tests copy caches around)."""
    import json

    return json.loads(json.dumps(stages).replace(str(cache), "<cache>"))


def moved(cache, built) -> dict:
    """The stage directories of the last run in ``cache`` that are not those of the fixture's run."""
    return {k: v for k, v in stage_dirs(cache).items() if v != stage_dirs(built.cache).get(k)}


# -- (a) the cache knows the code --------------------------------------------------------------------
def test_editing_a_verifier_rebuilds_exactly_the_evaluation_and_rl_stages(built, tmp_path, monkeypatch, caplog):
    from tms.stages.rl import rl_key
    from tms.core.keys import stage
    from tms.stages.common import ModelRef

    cache = copy_of(built, tmp_path)
    rl_cfg = compose(["experiment=smoke", f"cache_dir={cache}", "method=grpo"])
    base = ModelRef(built.pipe["stages"]["base"], {"stage": "base/x"})
    before = {k: code_identity.identity(k) for k in KINDS}
    rl_before = stage(rl_cfg, "rl", rl_key(rl_cfg, base))
    edit(monkeypatch, "data/tasks/verify.py")
    assert {k for k in KINDS if code_identity.identity(k) != before[k]} == {"rl", "eval"}
    rl_after = stage(rl_cfg, "rl", rl_key(rl_cfg, base))
    assert rl_after.hash != rl_before.hash and rl_after.config_hash == rl_before.config_hash

    caplog.set_level(logging.INFO, logger="tms.core.cache")
    results = run_pipeline(cache, tmp_path / "run")
    stages = relative(read_json(tmp_path / "run" / "pipeline.json")["stages"], cache)
    for name in ("base", "sft", "student", "harvest"):  # reused: the very same directories
        assert stages[name] == relative(built.pipe["stages"], built.cache)[name], name
    assert set(moved(cache, built)) == {"eval"}
    old, new = stage_dirs(built.cache)["eval"], stage_dirs(cache)["eval"]
    assert old < new and len(new - old) == 3  # θ0, SFT and the student, evaluated again
    config = {read_json(cache / "eval" / h / "manifest.json")["config_hash"] for h in new - old}
    assert config == {read_json(cache / "eval" / h / "manifest.json")["config_hash"] for h in old}
    said = [r.getMessage() for r in caplog.records if "same config but was built by other code" in r.getMessage()]
    assert len(said) == 3 and all("changed: tms/data/tasks/verify.py" in m and str(cache / "eval") in m for m in said)
    assert results["rows"] == built.results["rows"]  # the toy does not use verify.py: the same numbers


def test_identity_hashes_the_bytes_of_the_files(tmp_path, monkeypatch):
    copy = tmp_path / "tms"
    shutil.copytree(code_identity.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code_identity, "PACKAGE", copy)
    monkeypatch.setattr(code_identity, "_digest", functools.lru_cache(None)(code_identity._digest.__wrapped__))
    base = {k: code_identity.identity(k) for k in KINDS}
    assert base == {k: code_identity.identity(k) for k in KINDS}  # deterministic
    text = (copy / "data/tasks/verify.py").read_text()

    def changed_after(rel, new_text):
        (copy / rel).write_text(new_text)
        code_identity.clear_cache()  # digests are computed once per process
        return {k for k in KINDS if code_identity.identity(k) != base[k]}

    assert changed_after("data/tasks/verify.py", text.replace("def countdown_verify(", "def countdown_verify(  ", 1)) == {"rl", "eval"}
    gold = text.replace("return text[match.end() : i].strip()", "return text[match.end() : i].strip()  # gold", 1)
    assert changed_after("data/tasks/verify.py", gold) == set(KINDS) - {"gguf"}  # last_boxed decides which MATH examples exist
    assert changed_after("data/tasks/verify.py", text) == set()
    assert changed_after("objectives/nll.py", (copy / "objectives/nll.py").read_text() + "\n") == set(KINDS)
    files = code_identity.files("sft")
    assert files == sorted(files) and "data/tasks/verify.py" not in files and "objectives/nll.py" in files
    assert all(not f.startswith("/") for f in files)


def test_cache_reuse_warn_reuses_stages_built_by_other_code(built, tmp_path, monkeypatch, caplog):
    cache = copy_of(built, tmp_path)
    edit(monkeypatch, "objectives/nll.py")  # every kind's code changes
    caplog.set_level(logging.INFO, logger="tms.core.cache")
    results = run_pipeline(cache, tmp_path / "run", "cache_reuse=warn")
    assert stage_dirs(cache) == stage_dirs(built.cache)  # nothing rebuilt
    stages = read_json(tmp_path / "run" / "pipeline.json")["stages"]
    assert relative(stages, cache) == relative(built.pipe["stages"], built.cache)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "cache_reuse=warn" in r.getMessage()]
    for kind in ("base", "sft", "harvest", "student", "eval"):
        assert any(m.startswith(f"{kind}: ") and str(cache / kind) in m and "changed: tms/objectives/nll.py" in m
                   for m in warned), kind
    assert results["rows"] == built.results["rows"]
    with pytest.raises(ValueError, match="cache_reuse='sometimes'"):
        Stage(cache, "sft", {}, reuse="sometimes")


def test_the_manifest_records_the_config_and_the_code_part(built):
    m = read_json(Path(built.pipe["stages"]["sft"]) / "manifest.json")
    from tms.core.cache import config_hash

    assert m["config_hash"] == config_hash(m["key"]) and m["hash"] == config_hash({"config": m["key"], "code": m["code"]})
    assert m["code"] == code_identity.identity("sft") and m["code_files"] == code_identity.file_digests("sft")
    weights = {k: v for k, v in m["files"].items() if k.endswith(".safetensors")}
    assert len(weights) == 3 and all(len(v["sha256"]) == 64 and v["size"] > 0 for v in weights.values())
    shards = read_json(Path(built.pipe["stages"]["harvest"]["t=1"]) / "manifest.json")["files"]
    assert len(shards) == 3 and all(len(v["sha256"]) == 64 for v in shards.values())


# -- (c) a damaged harvest shard is regenerated alone ------------------------------------------------
@pytest.mark.parametrize("damage", ["deleted", "truncated", "corrupted"])
def test_a_damaged_harvest_shard_is_regenerated_alone(built, tmp_path, caplog, damage):
    cache = copy_of(built, tmp_path)
    hdir = cache / "harvest" / Path(built.pipe["stages"]["harvest"]["t=2"]).name
    original = read_buffer(hdir)
    shard = hdir / "t=002" / "shard-00001.parquet"
    others = {p.name: p.stat().st_mtime_ns for p in shard.parent.iterdir() if p != shard}
    data = shard.read_bytes()
    if damage == "deleted":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    else:  # same size, other bytes
        shard.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:110]) + data[110:])
    student_finished = read_json(cache / "student" / Path(built.pipe["stages"]["student"]).name / "manifest.json")["finished"]
    caplog.set_level(logging.INFO, logger="tms.core.cache")
    results = run_pipeline(cache, tmp_path / "run")
    assert stage_dirs(cache) == stage_dirs(built.cache)  # the same stages, repaired in place
    assert read_buffer(hdir).equals(original)  # row for row, every column
    assert shard.read_bytes() == data
    assert {p.name: p.stat().st_mtime_ns for p in shard.parent.iterdir() if p != shard} == others  # alone
    info = read_json(hdir / "manifest.json")["info"]
    assert info["resumed_shards"] == 2 and info["completions"] == 32 * 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{shard}" in m and "regenerating it alone" in m for m in messages)
    assert any("regenerated t=002/shard-00001.parquet is identical to the original" in m for m in messages)
    student = cache / "student" / Path(built.pipe["stages"]["student"]).name
    assert read_json(student / "manifest.json")["finished"] == student_finished  # the student is reused
    assert results["rows"] == built.results["rows"]


# -- (b) damage that cannot be repaired names the file and the rebuild command -----------------------
def damage_sft_weights(cache, built, how):
    path = cache / "sft" / Path(built.pipe["stages"]["sft"]).name / "checkpoints" / "t=02" / "model.safetensors"
    data = path.read_bytes()
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[:-1000])
    else:  # rewritten in place, same size: the mtime changed, so the full checksum is computed
        path.write_bytes(data[: len(data) // 2] + bytes(8) + data[len(data) // 2 + 8:])
    return path


@pytest.mark.parametrize("damage", ["manifest", "weights deleted", "weights truncated", "weights rewritten",
                                    "results.json deleted"])
def test_unrepairable_damage_names_the_file_and_the_rebuild_command(built, tmp_path, damage):
    cache = copy_of(built, tmp_path)
    kind = "eval" if damage.startswith("results") else "sft"
    sdir = cache / "sft" / Path(built.pipe["stages"]["sft"]).name
    if damage == "manifest":
        text = (sdir / "manifest.json").read_text()
        (sdir / "manifest.json").write_text(text[: len(text) // 3])
        named = sdir / "manifest.json"
    elif damage.startswith("weights"):
        named = damage_sft_weights(cache, built, damage.split()[1])
    else:  # θ0's evaluation
        sdir = next(p for p in (cache / "eval").iterdir() if p.is_dir() and
                    read_json(p / "manifest.json")["key"]["model"] == read_json(p / "manifest.json")["key"]["base"])
        (sdir / "results.json").unlink()
        named = sdir / "results.json"
    with pytest.raises(StageCorrupt) as err:
        run_pipeline(cache, tmp_path / "run")
    message = str(err.value)
    command = f"python -m tms.core.cache rm {kind}/{sdir.name} --cache-dir {cache}"
    assert str(named) in message and command in message and f"rm -rf {sdir}" in message, message
    assert cli.main(["verify", "--cache-dir", str(cache), "--full"]) == 1
    assert cli.main(command.split()[3:]) == 0 and not sdir.exists()  # the command the error names ...
    results = run_pipeline(cache, tmp_path / "run")  # ... and the re-run rebuilds the stage as it was
    assert stage_dirs(cache) == stage_dirs(built.cache) and results["rows"] == built.results["rows"]
    assert cli.main(["verify", "--cache-dir", str(cache), "--full"]) == 0


def test_a_truncated_json_file_is_named(tmp_path):
    from tms.core.io import CorruptJSON, write_json

    write_json(tmp_path / "a.json", {"k": list(range(50))})
    (tmp_path / "a.json").write_text((tmp_path / "a.json").read_text()[:40])
    with pytest.raises(CorruptJSON, match=re.escape(str(tmp_path / "a.json")) + ".*truncated"):
        read_json(tmp_path / "a.json")


def test_verification_cost_on_the_toy(built):
    """Checking every stage of a TMS run before reuse: ~ms (see tms/core/cache/verify.py for the choice)."""
    stages = [p for k in built.cache.iterdir() if k.is_dir() for p in k.iterdir() if p.is_dir()]
    manifests = [read_json(p / "manifest.json")["files"] for p in stages]
    cost = {}
    for full in (False, True):
        t0 = time.perf_counter()
        for _ in range(10):
            assert all(verify.check(p, m, full=full) == [] for p, m in zip(stages, manifests))
        cost[full] = (time.perf_counter() - t0) / 10
    print(f"\nverify {len(stages)} stages: {cost[False] * 1e3:.1f} ms (reuse check), {cost[True] * 1e3:.1f} ms (full)")
    assert cost[False] < 0.5 and cost[True] < 1.0


# -- no reuse path substitutes references for harvested samples --------------------------------------
def test_a_prompt_subset_is_the_only_way_to_train_unharvested_examples_on_references(built, tmp_path):
    cache = copy_of(built, tmp_path)
    run_pipeline(cache, tmp_path / "run", "harvest.prompt_subset=32", "data.target_source.alpha=0")
    pipe = read_json(tmp_path / "run" / "pipeline.json")
    counts = read_json(Path(pipe["stages"]["student"]) / "mixture_counts.json")["0"]
    assert counts["reference_unharvested"] == 96 - 32 and sum(v for k, v in counts.items() if k.startswith("t=")) == 32
    assert read_buffer(pipe["stages"]["harvest"]["t=1"]).num_rows == 32


# -- python -m tms.core.cache ls / gc ---------------------------------------------------------------------
def test_ls_and_gc_list_and_remove_exactly_what_they_should(built, tmp_path, monkeypatch, capsys):
    cache = copy_of(built, tmp_path)
    runs = tmp_path / "runs"
    pj = runs / "2025-01-01" / "12-00-00_tms" / "pipeline.json"
    pj.parent.mkdir(parents=True)
    pj.write_text((built.run / "pipeline.json").read_text().replace(str(built.cache), str(cache)))
    edit(monkeypatch, "generation/harvest.py")  # new harvests, hence a new student and its evaluation
    run_pipeline(cache, tmp_path / "run2")
    new = read_json(tmp_path / "run2" / "pipeline.json")["stages"]
    old = read_json(pj)["stages"]
    old_eval = [p.name for p in (cache / "eval").iterdir() if p.is_dir()
                and read_json(p / "manifest.json")["key"]["model"].get("stage") == f"student/{Path(old['student']).name}"]
    assert len(old_eval) == 1
    idle, busy = cache / "sft" / ("a" * 16 + ".partial"), cache / "sft" / ("b" * 16 + ".partial")
    for p in (idle, busy):
        p.mkdir()
        (p / "half.bin").write_bytes(bytes(10))
    lock = open(cache / "sft" / ("b" * 16 + ".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # a running process builds it

    assert cli.main(["ls", "--cache-dir", str(cache), "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    print(out)
    rows = {tuple(line.split()[:2]): line for line in out.splitlines()[1:]}
    assert out.splitlines()[0].split()[:5] == ["KIND", "HASH", "STATUS", "CODE", "SIZE"]
    assert len(rows) == sum(len(v) for v in stage_dirs(cache).values())
    old_h = [Path(p).name for p in old["harvest"].values()]
    for h in old_h:
        assert rows[("harvest", h)].split()[2:4] == ["complete", "superseded"] and "run:" in rows[("harvest", h)]
    for h in [Path(p).name for p in new["harvest"].values()]:
        assert rows[("harvest", h)].split()[2:4] == ["complete", "current"]
    assert rows[("sft", "a" * 16)].split()[2] == "partial" and rows[("sft", "b" * 16)].split()[2] == "partial*"
    entries = cli.scan(cache)
    cli.run_refs(cache, [runs], entries)
    refs = {e.name: e.referenced_by for e in entries}
    sft = Path(new["sft"]).name
    assert {f"harvest/{Path(h).name}" for h in [*old["harvest"].values(), *new["harvest"].values()]} <= set(refs[f"sft/{sft}"])
    assert f"run:{pj.parent}" in refs[f"sft/{sft}"] and f"student/{Path(old['student']).name}" in refs[f"harvest/{old_h[0]}"]

    def gc(*flags):
        before = stage_dirs(cache)
        assert cli.main(["gc", "--cache-dir", str(cache), *flags]) == 0
        after = stage_dirs(cache)
        return {(k, d) for k in before for d in before[k] - after.get(k, set())}, capsys.readouterr().out

    gone, out = gc("--dry-run", "--runs", str(tmp_path / "none"))
    assert gone == set()
    would = set(re.findall(r"would remove (\w+)/(\w+)", out))
    assert would == {("harvest", h) for h in old_h} | {("student", Path(old["student"]).name),
                                                       ("eval", old_eval[0]), ("sft", "a" * 16)}
    gone, out = gc("--runs", str(runs))  # the old run references its harvests and student: they stay
    assert gone == {("eval", old_eval[0]), ("sft", "a" * 16 + ".partial")}
    gone, out = gc("--runs", str(tmp_path / "none"))
    assert gone == {("harvest", h) for h in old_h} | {("student", Path(old["student"]).name)}
    assert busy.is_dir()  # locked: kept
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    gone, _ = gc("--runs", str(tmp_path / "none"))
    assert gone == {("sft", "b" * 16 + ".partial")}
    assert gc("--runs", str(tmp_path / "none"))[0] == set()  # every current stage is kept
    assert run_pipeline(cache, tmp_path / "run3")["rows"] == read_json(tmp_path / "run2" / "results.json")["rows"]


def test_every_module_a_stage_imports_is_hashed_or_declared_unhashed():
    """The module lists stay honest: each hashed file's tms imports (function-level ones too) are hashed
    for that kind, or in NOT_HASHED / NOT_FOLLOWED / VERIFIERS (kinds that do not grade)."""
    import ast
    import fnmatch

    root = code_identity.PACKAGE

    def module_file(mod: str) -> str | None:
        rel = mod.split(".", 1)[1].replace(".", "/") if "." in mod else ""
        return next((c for c in (f"{rel}.py", f"{rel}/__init__.py") if rel and (root / c).is_file()), None)

    def imports(rel: str) -> set[str]:
        out = set()
        for node in ast.walk(ast.parse((root / rel).read_text())):
            mods = [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if isinstance(node, ast.ImportFrom) \
                and node.module else [a.name for a in node.names] if isinstance(node, ast.Import) else []
            out |= {f for m in mods if m.startswith("tms") and (f := module_file(m))}
        return out

    for kind in code_identity.MODULES:
        files = code_identity.files(kind)
        hashed = {f.split(":")[0] for f in files}
        allowed = code_identity.NOT_HASHED + code_identity.NOT_FOLLOWED.get(kind, ()) + code_identity.VERIFIERS
        loose = {(f, i) for f in files if ":" not in f for i in imports(f)
                 if i not in hashed and not any(fnmatch.fnmatch(i, p) for p in allowed)}
        assert not loose, f"{kind}: imported but neither hashed nor declared unhashed in tms/core/code_identity.py: {loose}"


def test_a_correct_only_student_keys_on_the_verifier_and_rescores_a_stale_harvest(built, monkeypatch):
    from tms.generation.harvest import rescore

    class Task:
        def examples(self, split):
            return [SimpleNamespace(id=i, answer=None) for i in table.column("example_id").to_pylist()]

        def score(self, completions, answers):
            return [0.5] * len(completions)

    harvest = Stage(built.cache, "harvest", read_json(Path(built.pipe["stages"]["harvest"]["t=1"]) / "manifest.json")["key"])
    assert harvest.done and str(harvest.dir) == built.pipe["stages"]["harvest"]["t=1"]
    table = read_buffer(harvest.dir)
    assert rescore(table, harvest, Task()) is table and rescore(table, harvest, None) is table  # same verifier
    plain, verified = (Stage(built.cache, "student", {"k": 1}, extra=e) for e in ((), ("verifiers",)))
    edit(monkeypatch, "data/tasks/verify.py")
    assert rescore(table, harvest, Task()).column("score").to_pylist() == [0.5] * table.num_rows
    assert rescore(table, harvest, None) is table
    assert Stage(built.cache, "student", {"k": 1}).hash == plain.hash  # a plain student does not use the scores
    assert Stage(built.cache, "student", {"k": 1}, extra=("verifiers",)).hash != verified.hash
