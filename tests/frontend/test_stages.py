"""The stage split is a pure function; no layer is ever dropped or doubled."""

from hypothesis import given
from hypothesis import strategies as st

from par.dsl.checks.stages import coverage_problems, even_split, from_counts


@given(st.integers(1, 500), st.integers(1, 64))
def test_even_split_covers_every_layer_once(layers, pp):
    if pp > layers:
        return
    ranges = even_split(layers, pp)
    assert len(ranges) == pp
    covered = [layer for first, last in ranges for layer in range(first, last + 1)]
    assert covered == list(range(layers))
    sizes = [last - first + 1 for first, last in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert coverage_problems(list(ranges), layers) == []


@given(st.lists(st.integers(1, 20), min_size=1, max_size=10))
def test_counts_become_contiguous_ranges(counts):
    ranges = from_counts(counts)
    assert [last - first + 1 for first, last in ranges] == counts
    assert coverage_problems(list(ranges), sum(counts)) == []


def test_coverage_problems_name_the_layers():
    assert coverage_problems([(0, 1), (4, 5)], 6) == ["layers 2..3 are on no stage"]
    assert coverage_problems([(0, 3), (3, 5)], 6) == ["layer 3 is on stages 0 and 1"]
    assert coverage_problems([(2, 5), (0, 1)], 6) == ["stage 1 does not start where stage 0 ends"]
