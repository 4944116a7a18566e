import pytest

from router.heldout import held_out

TEXTS = [f"Question number {i} about something else entirely?" for i in range(4000)]


def test_about_the_share_is_held_out_and_none_at_zero():
    assert held_out(TEXTS, 0.0).sum() == 0
    assert abs(held_out(TEXTS, 0.2).mean() - 0.2) < 0.02
    assert abs(held_out(TEXTS, 0.5).mean() - 0.5) < 0.03


def test_a_question_keeps_its_side_whatever_comes_with_it():
    whole = held_out(TEXTS, 0.2)
    assert (held_out(TEXTS[::-1], 0.2)[::-1] == whole).all()
    assert (held_out(TEXTS[1000:2000], 0.2) == whole[1000:2000]).all()
    assert (held_out(TEXTS, 0.3) >= whole).all()


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5])
def test_share_out_of_range_is_refused(share):
    with pytest.raises(ValueError, match="held-out share must be in"):
        held_out(TEXTS[:3], share)
