"""utils.stats: the course's one noise rule."""
import math

import pytest

from utils.stats import new_run_half_width, paired_difference, proportion_half_width, t_975, unpaired_difference


def test_paired_difference_by_hand():
    out = paired_difference([0.5, 0.6, 0.7], [0.4, 0.4, 0.4])      # differences 0.1, 0.2, 0.3
    assert out["mean"] == pytest.approx(0.2) and out["sd"] == pytest.approx(0.1)
    assert out["half_width"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert not out["beyond_noise"]                                   # 0.2 < 0.248
    assert paired_difference([0.5, 0.6, 0.7], [0.2, 0.3, 0.4])["beyond_noise"]   # constant 0.3, sd 0


def test_pairing_removes_what_the_seeds_share():
    """Large seed-to-seed swings that both arms share cancel in a paired comparison."""
    a, b = [0.2, 0.9, 0.5], [0.15, 0.84, 0.46]
    assert paired_difference(a, b)["beyond_noise"]


def test_rule_refuses_one_seed_and_unpaired_lengths():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        paired_difference([0.5], [0.4])
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([0.5, 0.6], [0.4])


def test_t_table_and_proportion():
    assert t_975(2) == 4.303 and t_975(11) == 2.228 and t_975(100) == 1.96
    assert proportion_half_width(0.5, 100) == pytest.approx(0.098)


def test_new_run_half_width_by_hand():
    values = [0.70, 0.72, 0.74]                        # sd 0.02 (ddof=1), t(2) = 4.303
    assert new_run_half_width(values) == pytest.approx(4.303 * 0.02 * math.sqrt(1 + 1 / 3))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        new_run_half_width([0.7])


def test_unpaired_difference_by_hand():
    a, b = [10.0, 12.0, 14.0], [4.0, 5.0, 6.0]                  # sd 2 and 1; se² = 4/3 + 1/3
    d = unpaired_difference(a, b)
    se = math.sqrt(5 / 3)
    dof = (5 / 3) ** 2 / ((4 / 3) ** 2 / 2 + (1 / 3) ** 2 / 2)    # Welch: 2.94 -> t(2)
    assert d["mean"] == 7.0 and d["sd"] == pytest.approx(se) and int(dof) == 2
    assert d["half_width"] == pytest.approx(4.303 * se) and d["beyond_noise"]
    assert not unpaired_difference([1.0, 3.0], [2.0, 2.5])["beyond_noise"]
    with pytest.raises(ValueError, match="at least 2 runs"):
        unpaired_difference([1.0], [1.0, 2.0])
