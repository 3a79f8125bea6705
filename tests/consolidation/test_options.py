from dataclasses import fields
from datetime import timedelta

import pytest

from orchestration.consolidation.errors import DataError
from orchestration.consolidation.options import ConsolidationOptions, InvalidOptions, resolve_options
from orchestration.store.types import utcnow


def test_defaults():
    assert resolve_options(None) == resolve_options({}) == ConsolidationOptions()
    assert resolve_options(None).as_dict() == {
        "merge": True,
        "archive": True,
        "similarity_threshold": 0.90,
        "min_cluster_size": 2,
        "same_type_only": True,
        "archive_stale_days": 90,
        "archive_min_reuse": 3,
        "value_guard": True,
        "full_pass_every_days": None,
    }


def test_overrides():
    options = resolve_options({"similarity_threshold": 0.95, "archive": False, "min_cluster_size": 3.0})
    assert options.similarity_threshold == 0.95 and options.archive is False and options.min_cluster_size == 3


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"similarity_threshold": "high"}, "similarity_threshold"),
        ({"similarity_threshold": 1.5}, "similarity_threshold"),
        ({"similarity_threshold": 0}, "similarity_threshold"),
        ({"merge": "yes"}, "merge"),
        ({"merge": 1}, "merge"),
        ({"min_cluster_size": 1}, "min_cluster_size"),
        ({"min_cluster_size": 2.5}, "min_cluster_size"),
        ({"archive_stale_days": True}, "archive_stale_days"),
        ({"archive_min_reuse": -1}, "archive_min_reuse"),
        ({"colour": "blue"}, "colour"),
        (["merge"], "(root)"),
    ],
)
def test_bad_options_name_the_field(overrides, field):
    with pytest.raises(InvalidOptions) as info:
        resolve_options(overrides)
    assert info.value.field == field
    assert str(info.value).startswith(f"consolidation_options.{field}:")


# Issue 22, finding 6: every option has a range, and a value out of it fails the job at
# once (InvalidOptions is a DataError, never retried) with a message naming the option,
# the value and the range.
RANGES = {
    "similarity_threshold": "in (0, 1]",
    "min_cluster_size": "from 2 to 10,000",
    "archive_stale_days": "from 1 to 36,500",
    "archive_min_reuse": "from 0 to 1,000,000,000",
    "full_pass_every_days": "from 1 to 36,500 or null",
}


def test_archive_stale_days_of_a_hundred_million_is_refused_not_an_overflow():
    with pytest.raises(DataError) as info:
        resolve_options({"archive_stale_days": 100_000_000})
    assert isinstance(info.value, InvalidOptions) and info.value.field == "archive_stale_days"
    assert str(info.value) == "consolidation_options.archive_stale_days: must be from 1 to 36,500, got 100000000"


def test_the_longest_archive_period_still_computes_a_cutoff():
    options = resolve_options({"archive_stale_days": 36_500})
    assert utcnow() - timedelta(days=options.archive_stale_days) < utcnow()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("similarity_threshold", 0),
        ("similarity_threshold", -0.5),
        ("similarity_threshold", 1.0001),
        ("similarity_threshold", float("nan")),
        ("similarity_threshold", float("inf")),
        ("min_cluster_size", 1),
        ("min_cluster_size", 0),
        ("min_cluster_size", 10_001),
        ("archive_stale_days", 0),
        ("archive_stale_days", -1),
        ("archive_stale_days", 36_501),
        ("archive_stale_days", 1e300),
        ("archive_min_reuse", -1),
        ("archive_min_reuse", 10**12),
        ("full_pass_every_days", 0),
        ("full_pass_every_days", 36_501),
    ],
)
def test_each_number_option_out_of_range_names_the_option_the_value_and_the_range(name, value):
    with pytest.raises(InvalidOptions) as info:
        resolve_options({name: value})
    assert isinstance(info.value, DataError) and info.value.field == name
    assert str(info.value) == f"consolidation_options.{name}: must be {RANGES[name]}, got {value!r}"


@pytest.mark.parametrize("name", ["merge", "archive", "same_type_only", "value_guard"])
@pytest.mark.parametrize("value", ["yes", "true", 1, 0, None])
def test_switches_must_be_real_booleans(name, value):
    with pytest.raises(InvalidOptions) as info:
        resolve_options({name: value})
    assert str(info.value) == f"consolidation_options.{name}: must be true or false, got {value!r}"
    assert isinstance(info.value, DataError)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("min_cluster_size", 2.5, "must be a whole number from 2 to 10,000, got 2.5"),
        ("archive_stale_days", "90", "must be a number from 1 to 36,500, got '90'"),
        ("similarity_threshold", None, "must be a number in (0, 1], got None"),
        ("full_pass_every_days", "7", "must be a number from 1 to 36,500 or null, got '7'"),
        ("full_pass_every_days", 1.5, "must be a whole number from 1 to 36,500 or null, got 1.5"),
    ],
)
def test_wrong_types_name_the_range_too(name, value, problem):
    with pytest.raises(InvalidOptions) as info:
        resolve_options({name: value})
    assert str(info.value) == f"consolidation_options.{name}: {problem}"


def test_full_pass_every_days_is_unset_by_default_and_may_be_unset_again() -> None:
    assert resolve_options({}).full_pass_every_days is None
    assert resolve_options({"full_pass_every_days": None}).full_pass_every_days is None
    assert resolve_options({"full_pass_every_days": 7.0}).full_pass_every_days == 7


def test_options_made_directly_are_checked_too() -> None:
    with pytest.raises(InvalidOptions, match="archive_stale_days: must be from 1 to 36,500"):
        ConsolidationOptions(archive_stale_days=100_000_000)
    assert ConsolidationOptions(min_cluster_size=3.0).min_cluster_size == 3  # type: ignore[arg-type]


def test_every_option_is_checked():
    """A new option without a range or a switch's type would pass unchecked."""
    for option in fields(ConsolidationOptions):
        assert option.type == "bool" or option.name in RANGES
