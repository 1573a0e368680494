"""The T trajectory checkpoints are equally spaced and end at the last step."""
import pytest

from tms.training.callbacks import checkpoint_steps


@pytest.mark.parametrize("N,T", [(10, 10), (100, 10), (25, 10), (7, 3), (1000, 12), (13, 1), (37, 8), (6, 4)])
def test_checkpoint_steps_are_equally_spaced(N, T):
    steps = checkpoint_steps(N, T)
    assert len(steps) == T and steps[-1] == N
    assert all(b > a for a, b in zip(steps, steps[1:]))  # distinct and increasing
    for t, s in enumerate(steps, 1):
        assert abs(s - t * N / T) <= 0.5  # the nearest step to t*N/T


def test_known_values():
    assert checkpoint_steps(100, 10) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert checkpoint_steps(25, 10) == [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]
    assert checkpoint_steps(5, 5) == [1, 2, 3, 4, 5]


def test_T_larger_than_steps_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="num_checkpoints"):
        checkpoint_steps(5, 6)
    with pytest.raises(ValueError, match="num_checkpoints"):
        checkpoint_steps(5, 0)
