import numpy as np

from router.training import choose_threshold

N = 100  # rows per class; columns: expert a, expert b, general


def _rows(top: float, column: int, n: int = N) -> np.ndarray:
    rest = (1 - top) / 2
    p = np.full((n, 3), rest)
    p[:, column] = top
    return p


def _data(general_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Experts a and b each route 90 of 100 rows right with p = 0.9; the other 10 go to the other expert."""
    a = np.vstack([_rows(0.9, 0, 90), _rows(0.9, 1, 10)])
    b = np.vstack([_rows(0.9, 1, 90), _rows(0.9, 0, 10)])
    return np.vstack([a, b, general_rows]), np.repeat([0, 1, 2], N)


def test_a_real_gain_sets_the_threshold_between_the_groups():
    """30 general questions whose top expert has p = 0.4 only fall back above 0.4; experts' rows are at 0.9."""
    p, y = _data(np.vstack([_rows(0.8, 2, 70), _rows(0.4, 0, 30)]))
    threshold, score = choose_threshold(p, y)
    assert 0.4 < threshold < 0.9
    assert score == np.mean([0.9, 0.9, 1.0])


def test_a_one_question_bump_does_not_move_the_threshold():
    """One general question at p = 0.62 makes every threshold above it 1/300 better: noise, not a choice."""
    p, y = _data(np.vstack([_rows(0.8, 2, 99), _rows(0.62, 0, 1)]))
    threshold, _ = choose_threshold(p, y)
    assert 0.3 < threshold < 0.62
