"""The held-out images: never among those the search validates on, the same every time."""

from pathlib import Path

import yaml

from edgesearch.runners.accuracy.finetune import load_dataset_info
from edgesearch.runners.accuracy.splits import HOLDOUT_SHARE, search_and_holdout


def _listed(data_yaml: Path, split: str) -> set[str]:
    return {line for line in Path(load_dataset_info(data_yaml)[split]).read_text().splitlines() if line}


def test_without_a_test_split_a_fixed_third_of_val_is_held_out(smoke_inputs):
    val = Path(load_dataset_info(smoke_inputs.data_yaml)["val"])
    images = {str(p) for p in val.rglob("*.png")}
    with search_and_holdout(smoke_inputs.data_yaml) as (search, holdout, split, how):
        searched, held = _listed(search, "val"), _listed(holdout, split)
        assert searched | held == images and not searched & held  # a partition of val
        assert abs(len(held) - len(images) / HOLDOUT_SHARE) <= 0.25 * len(images) and "hash" in how
    with search_and_holdout(smoke_inputs.data_yaml) as (_, again, split, _):
        assert _listed(again, split) == held  # the same images every time
    assert not search.exists()  # written to a temporary folder, never beside the user's data


def test_a_datasets_own_test_split_is_the_held_out_one(smoke_inputs, tmp_path):
    data = yaml.safe_load(smoke_inputs.data_yaml.read_text())
    data["path"] = str(smoke_inputs.data_yaml.parent)
    data["test"] = data["val"]
    with_test = tmp_path / "data.yaml"
    with_test.write_text(yaml.safe_dump(data))
    with search_and_holdout(with_test) as (search, holdout, split, how):
        assert search == holdout == with_test and split == "test" and "test split" in how


def test_a_val_split_too_small_to_spare_a_held_out_part_is_refused(smoke_inputs, tmp_path):
    import pytest

    from edgesearch.common.errors import InputError
    from edgesearch.runners.accuracy.splits import check_splittable

    val = sorted(Path(load_dataset_info(smoke_inputs.data_yaml)["val"]).rglob("*.png"))[:4]
    (tmp_path / "val.txt").write_text("".join(f"{p}\n" for p in val))
    data = yaml.safe_load(smoke_inputs.data_yaml.read_text())
    data.update(path=str(smoke_inputs.data_yaml.parent), val=str(tmp_path / "val.txt"))
    small = tmp_path / "data.yaml"
    small.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="too few to hold out"):
        check_splittable(small)
    check_splittable(smoke_inputs.data_yaml)  # the smoke dataset's val split is large enough
