import pytest

from data_prep.manifest import Split, assign_splits


def _patients(n_pos: int, n_neg: int) -> dict[str, int]:
    return {**{f"P-pos{i}": 1 for i in range(n_pos)}, **{f"P-neg{i}": 0 for i in range(n_neg)}}


def test_split_assigns_every_patient_exactly_once_and_is_stratified():
    labels = _patients(60, 40)
    splits = assign_splits(labels, fractions=(0.7, 0.15, 0.15), seed=0)
    assert set(splits) == set(labels)
    for label, n in ((1, 60), (0, 40)):
        members = [p for p, lab in labels.items() if lab == label]
        counts = {s: sum(1 for p in members if splits[p] is s) for s in Split}
        assert counts[Split.TEST] == round(n * 0.15)
        assert counts[Split.VALIDATION] == round(n * 0.15)
        assert counts[Split.TRAIN] == n - 2 * round(n * 0.15)


def test_split_is_deterministic_and_independent_of_input_order():
    labels = _patients(30, 30)
    a = assign_splits(labels, fractions=(0.6, 0.2, 0.2), seed=3)
    b = assign_splits(dict(reversed(list(labels.items()))), fractions=(0.6, 0.2, 0.2), seed=3)
    c = assign_splits(labels, fractions=(0.6, 0.2, 0.2), seed=4)
    assert a == b
    assert a != c


def test_split_rejects_fractions_not_summing_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits({"P-a": 1}, fractions=(0.5, 0.2, 0.2), seed=0)
