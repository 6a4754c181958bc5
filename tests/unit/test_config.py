import pytest

from torchrec_aes.config import ConfigError, config_to_dict, load_config, save_config


def test_defaults_file_and_overrides_apply_in_that_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 128\nmodel:\n  type: dcn\n")
    cfg = load_config(str(path), ["train.epochs=2", "search.candidates=[4,8]"])
    assert cfg.train.epochs == 2  # override beats file
    assert cfg.train.batch_size == 128  # file beats default
    assert cfg.train.dense_lr == 1e-3  # default
    assert cfg.model.type == "dcn"
    assert cfg.search.candidates == [4, 8]


def test_unknown_key_names_its_dotted_path_and_the_allowed_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'train.epoch'.*allowed here: seed, batch_size"
    ):
        load_config(str(path))


def test_unknown_override_key_is_an_error():
    with pytest.raises(ConfigError, match=r"'data.synthetic.rows'"):
        load_config(None, ["data.synthetic.rows=5"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=abc", r"train.epochs: expected an integer, got 'abc'"),
        ("train.epochs=1.5", r"train.epochs: expected an integer"),
        ("train.checkpoint=maybe", r"train.checkpoint: expected true/false"),
        ("model.type=xgboost", r"model.type: 'xgboost' is not one of dlrm, dcn"),
        ("search.candidates=[4,6]", r"multiples of 4"),
        ("data.split=[0.5,0.5,0.5]", r"data.split"),
        ("train", r"must look like a.b.c=value"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, ["model.over_arch=[8,4]", "data.synthetic.true_ranks=[0,4]"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = load_config(str(tmp_path / "config.yaml"))
    assert config_to_dict(again) == config_to_dict(cfg)


def test_invalid_yaml_is_reported_with_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(str(path))


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    "override",
    [
        "search.adass.supernet_epochs=0",
        "search.ihas.search_epochs=0",
        "search.nasrec.population=0",
        "search.ihas.num_groups=[1, 2, 2]",
        "search.ihas.num_groups=0",
        "search.ihas.num_groups=[]",
        "search.ihas.gate_init=5",
        "search.ihas.sparsity_weights=bytes",
        "search.ihas.dual=positive",
    ],
)
def test_a_method_sections_bad_value_is_refused_when_the_config_loads(override: str) -> None:
    # Whatever search.method is: the section's own checks run in load_config, before any data is read.
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(None, [override])


def test_a_key_given_twice_or_an_empty_file_is_refused_not_silently_resolved(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 2\n  seed: 1\n  epochs: 5\n")
    with pytest.raises(
        ConfigError, match=r"twice.yaml:4:3: .*key 'epochs' appears twice \(first on line 2\)"
    ):
        load_config(str(twice))
    sections = tmp_path / "sections.yaml"
    sections.write_text("train:\n  epochs: 2\nsearch:\n  method: uniform\ntrain:\n  seed: 3\n")
    with pytest.raises(ConfigError, match=r"key 'train' appears twice \(first on line 1\)"):
        load_config(str(sections))
    for text in ("", "# nothing here\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        with pytest.raises(ConfigError, match=r"empty.yaml: empty \(no settings\)"):
            load_config(str(empty))
