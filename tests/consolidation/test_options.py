import pytest

from orchestration.consolidation.options import ConsolidationOptions, InvalidOptions, resolve_options


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
