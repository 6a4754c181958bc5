import pytest
import yaml

from tests.helpers import tiny_splits
from torchrec_aes.architecture import Architecture


def test_architecture_round_trips_and_builds_ebc_configs(tmp_path):
    schema = tiny_splits(100).schema
    arch = Architecture.from_dims(schema, [4, 8, 0, 16, 4])
    arch.save(str(tmp_path / "architecture.yaml"))
    again = Architecture.load(str(tmp_path / "architecture.yaml"))
    assert again == arch
    configs = again.to_ebc_configs()
    # A dim of 0 drops the table.
    assert [c.name for c in configs] == ["t_c0", "t_c1", "t_c3", "t_c4"]
    assert [c.embedding_dim for c in configs] == [4, 8, 16, 4]
    assert configs[1].feature_names == ["c1"] and configs[1].num_embeddings == 100


def test_architecture_that_does_not_match_the_data_is_rejected():
    schema = tiny_splits(100).schema
    arch = Architecture.uniform(schema, 8)
    arch.tables[2].num_embeddings = 10
    with pytest.raises(ValueError, match="'t_c2' has 10 rows but feature 'c2' has ids up to 999"):
        arch.check_schema(schema)
    arch = Architecture.uniform(schema, 8)
    arch.tables[0].feature_names = ["nope"]
    with pytest.raises(ValueError, match="feature 'nope', which the data does not have"):
        arch.check_schema(schema)


def test_malformed_architecture_file_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({"tables": [{"name": "t", "feature_names": ["a"], "num_embeddings": 3}]}))
    with pytest.raises(ValueError, match=rf"{path}: tables\[0\] has keys"):
        Architecture.load(str(path))
