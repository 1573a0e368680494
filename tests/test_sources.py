"""Target sources: mixture frequencies, p(t) windows, reproducibility, correct-only, validation."""
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest

from tms.data.buffer import SCHEMA, TrajectoryBuffer
from tms.data.sources import ReferenceSource, TrajectoryMixtureSource, window_weights
from tms.data.tasks.base import Example


def make_buffer(n: int, ts, k: int = 1, score=lambda t, i, j: 1.0) -> tuple[list[Example], TrajectoryBuffer]:
    examples = [Example(id=f"x{i:04d}", prompt=f"p{i}", reference=f"ref{i}", answer=str(i)) for i in range(n)]
    rows = {c: [] for c in SCHEMA.names}
    for t in ts:
        for i, e in enumerate(examples):
            for j in range(k):
                for col, v in zip(SCHEMA.names, [e.id, e.prompt, t, t * 10, j, f"t{t}-x{i}-k{j}", 3, "stop", score(t, i, j)]):
                    rows[col].append(v)
    return examples, TrajectoryBuffer(pa.Table.from_pydict(rows, schema=SCHEMA))


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 6, 8, 10, 12])
def test_early_and_late_windows_match_the_paper(T):
    early, late = window_weights("early", T), window_weights("late", T)
    t = np.arange(1, T + 1)
    assert np.allclose(early, (t <= math.ceil(T / 3)) / (t <= math.ceil(T / 3)).sum())
    n_late = T - math.ceil(2 * T / 3) + 1
    assert np.allclose(late, (t >= math.ceil(2 * T / 3)) / n_late)
    assert np.allclose(window_weights("uniform", T), np.full(T, 1 / T))


def test_window_examples_for_T_10():
    assert np.flatnonzero(window_weights("early", 10)).tolist() == [0, 1, 2, 3]   # t = 1..4
    assert np.flatnonzero(window_weights("late", 10)).tolist() == [6, 7, 8, 9]    # t = 7..10


def chi2_ok(counts, probs, n):
    """Pearson chi-square below the 0.999 quantile (Wilson–Hilferty approximation)."""
    expected = np.asarray(probs) * n
    keep = expected > 0
    assert np.all(np.asarray(counts)[~keep] == 0), "draws from a zero-probability category"
    chi2 = float((((np.asarray(counts) - expected) ** 2)[keep] / expected[keep]).sum())
    df = int(keep.sum()) - 1
    if df == 0:
        return True
    z = 3.09  # 0.999 normal quantile
    q = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return chi2 < q


@pytest.mark.parametrize("p_t", ["uniform", "early", "late", [0.4, 0.3, 0.2, 0.1, 0.0, 0.0]])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.7])
def test_mixture_frequencies_match_alpha_and_p_t(p_t, alpha):
    T, n = 6, 4000
    examples, buffer = make_buffer(n, range(1, T + 1))
    src = TrajectoryMixtureSource(alpha=alpha, p_t=p_t)
    src.bind(examples, buffer=buffer, T=T)
    texts, labels = src.draw(epoch=0, seed=1)
    counts = src.counts(labels)
    probs = [alpha] + list((1 - alpha) * window_weights(p_t, T))
    observed = [counts.get("reference", 0)] + [counts.get(f"t={t}", 0) for t in range(1, T + 1)]
    assert sum(observed) == n
    assert chi2_ok(observed, probs, n), (observed, probs)
    # each drawn text is the buffer sample of the drawn checkpoint for that example
    for i, (text, label) in enumerate(zip(texts, labels)):
        assert text == (f"ref{i}" if label == "reference" else f"{label.replace('=', '')}-x{i}-k0")


def test_a_biased_sampler_fails_the_frequency_check():
    """The chi-square check has power: a 10% shift away from alpha is detected at n = 4000."""
    assert not chi2_ok([1400, 2600], [0.25, 0.75], 4000)


def test_draws_are_reproducible_and_fresh_each_epoch():
    examples, buffer = make_buffer(200, range(1, 5), k=3)
    a, b = TrajectoryMixtureSource(0.25), TrajectoryMixtureSource(0.25)
    a.bind(examples, buffer, 4)
    b.bind(examples, buffer, 4)
    assert a.draw(0, seed=7) == b.draw(0, seed=7)
    assert a.draw(0, seed=7) != a.draw(1, seed=7)
    assert a.draw(0, seed=7) != a.draw(0, seed=8)
    texts, _ = a.draw(0, seed=7)
    assert {t.split("-k")[1] for t in texts if t.startswith("t")} == {"0", "1", "2"}  # all k samples are used


def test_self_and_final_select_the_right_checkpoints():
    examples, buffer = make_buffer(50, range(0, 6))
    self_src = TrajectoryMixtureSource(alpha=0.0, checkpoints="base", name="self")
    final_src = TrajectoryMixtureSource(alpha=0.0, checkpoints="final", name="final")
    assert self_src.required_checkpoints(5) == [0] and final_src.required_checkpoints(5) == [5]
    for src, t in [(self_src, 0), (final_src, 5)]:
        src.bind(examples, buffer, 5)
        texts, labels = src.draw(0, seed=0)
        assert set(labels) == {f"t={t}"} and all(x.startswith(f"t{t}-") for x in texts)


def test_checkpoint_subset_and_its_window():
    examples, buffer = make_buffer(100, range(1, 11))
    src = TrajectoryMixtureSource(alpha=0.0, p_t="late", checkpoints=[2, 4, 6, 8, 10])
    assert src.required_checkpoints(10) == [2, 4, 6, 8, 10]
    src.bind(examples, buffer, 10)
    _, labels = src.draw(0, seed=0)
    assert set(labels) <= {"t=8", "t=10"}  # late over m=5 selected: positions >= ceil(2m/3) = 4


def test_correct_only_keeps_verified_samples_and_falls_back_to_the_reference():
    # example i has a correct sample only at t = 3, except even examples above 10 that have none
    score = lambda t, i, j: 1.0 if (t == 3 and not (i > 10 and i % 2 == 0)) else 0.0  # noqa: E731
    examples, buffer = make_buffer(40, [1, 2, 3], score=score)
    src = TrajectoryMixtureSource(alpha=0.0, correct_only=True)
    src.bind(examples, buffer, 3)
    texts, labels = src.draw(0, seed=3)
    for i, (text, label) in enumerate(zip(texts, labels)):
        if i > 10 and i % 2 == 0:
            assert label == "reference_fallback" and text == f"ref{i}"
        else:
            assert label == "t=3" and text == f"t3-x{i}-k0"


def test_unharvested_examples_train_on_the_reference_only_with_a_prompt_subset():
    examples, buffer = make_buffer(10, [1, 2])
    more = examples + [Example(id="extra", prompt="q", reference="refextra", answer="0")]
    src = TrajectoryMixtureSource(alpha=0.0)
    src.bind(more, TrajectoryBuffer(buffer.table, prompt_subset=10), 2)  # harvest.prompt_subset=10
    texts, labels = src.draw(0, seed=0)
    assert labels[-1] == "reference_unharvested" and texts[-1] == "refextra"
    assert labels.count("reference_unharvested") == 1


def test_a_buffer_missing_rows_is_refused_without_a_prompt_subset():
    """A lost shard must not turn harvested targets into references: the error names t and the count."""
    examples, buffer = make_buffer(10, [1, 2])
    table = buffer.table.filter(pa.compute.invert(pa.compute.and_(
        pa.compute.equal(buffer.table.column("t"), 2),
        pa.compute.is_in(buffer.table.column("example_id"), pa.array(["x0003", "x0004", "x0005"])))))
    src = TrajectoryMixtureSource(alpha=0.25)
    with pytest.raises(ValueError, match=r"checkpoint t=2 has no harvested sample for 3 of the 10 training examples"):
        src.bind(examples, TrajectoryBuffer(table), 2)
    more = examples + [Example(id="extra", prompt="q", reference="refextra", answer="0")]
    with pytest.raises(ValueError, match=r"t=1 has no harvested sample for 1 of the 11 .*harvest.prompt_subset"):
        src.bind(more, buffer, 2)


@pytest.mark.parametrize("kwargs,T,match", [
    ({"alpha": 1.5}, 4, "alpha"),
    ({"alpha": -0.1}, 4, "alpha"),
    ({"p_t": [0.5, 0.5]}, 4, "p_t.*2 weights given for 4"),
    ({"p_t": [0.5, 0.2, 0.2, 0.2]}, 4, "p_t.*sum to 1"),
    ({"p_t": "middle"}, 4, "p_t"),
    ({"checkpoints": [0, 5]}, 4, "checkpoints"),
    ({"checkpoints": [2, 2]}, 4, "checkpoints"),
    ({"checkpoints": "latest"}, 4, "checkpoints"),
])
def test_invalid_settings_name_the_key(kwargs, T, match):
    with pytest.raises(ValueError, match=match):
        TrajectoryMixtureSource(**kwargs).required_checkpoints(T)


def test_reference_source_returns_references():
    examples, _ = make_buffer(3, [1])
    src = ReferenceSource()
    src.bind(examples)
    assert src.draw(0, 0) == (["ref0", "ref1", "ref2"], ["reference"] * 3)
