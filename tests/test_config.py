import pytest

from hazematching.config import SAMPLING_PRESETS, ConfigError, ModelConfig, preset_overrides


def test_default_is_the_paper_network_with_its_sampler_and_yaml_roundtrip(tmp_path):
    c = ModelConfig()
    assert c.network.channel_mult == (1, 1, 2, 3, 4)
    assert c.training.lr == 5e-4 and c.training.batch_size == 16  # paper: 1e-4 (presets)
    fast = SAMPLING_PRESETS["default"]
    assert {k: getattr(c.sampling, k) for k in fast} == fast
    c.to_yaml(tmp_path / "c.yaml")
    assert ModelConfig.from_yaml(tmp_path / "c.yaml") == c


def test_paper_preset_is_the_published_sampler():
    c = ModelConfig().with_overrides(preset_overrides("paper"))
    s = c.sampling
    assert (s.solver, s.n_time_points, s.schedule, s.n_samples, s.mmse) == (
        "euler", 20, "uniform", 50, "samples")
    assert (s.tile_size, s.tile_overlap) == (128, 64)
    with pytest.raises(ValueError, match="unknown sampling preset 'slow'; expected one of default"):
        preset_overrides("slow")


@pytest.mark.parametrize("raw,field", [
    ({"training": {"lr": -1}}, "training.lr"),
    ({"data": {"patch_size": 100}}, "data.patch_size=100 must be divisible by 16"),
    ({"sampling": {"tile_size": 64, "tile_overlap": 40}}, "tile_overlap"),
    ({"method": "nope"}, "method 'nope' is unknown"),
    ({"data": {"axes": "QYX"}}, "data.axes"),
    ({"trainnig": {}}, "trainnig"),
    ({"network": {"attention_downsample": [3]}}, "attention_downsample contains 3"),
    ({"network": {"model_channels": 32000}}, "network.model_channels"),
    ({"network": {"channel_mult": [1, 2, 2, 2, 2, 2, 2, 2, 2]}}, "1 to 8 multipliers"),
    ({"network": {"channel_mult": [1, 64]}}, "each from 1 to 16"),
    ({"network": {"num_res_blocks": 100}}, "network.num_res_blocks"),
    # the default network attends at 16×16 (of a 128-px patch) 96 wide (32 × 3), and in its
    # middle block 128 wide (32 × 4)
    ({"network": {"num_heads": 5}}, r"num_heads=5 must divide the attention width 96"),
    ({"network": {"num_heads": 3}}, r"num_heads=3 must divide the attention width 128"),
])
def test_invalid_fields_are_named(raw, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        ModelConfig.from_dict(raw)


def test_yaml_errors_name_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("training: {lr: [}")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        ModelConfig.from_yaml(p)
    p.write_text("training:\n  epochs: zero\n")
    with pytest.raises(ConfigError, match=r"(?s)bad.yaml: invalid.*training.epochs"):
        ModelConfig.from_yaml(p)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        ModelConfig.from_yaml(tmp_path / "missing.yaml")


def test_overrides():
    c = ModelConfig().with_overrides({"training.epochs": 3, "sampling.solver": None})
    assert c.training.epochs == 3 and c.sampling.solver == "midpoint"  # None: left as it was
    with pytest.raises(ValueError, match="unknown config field 'training.epoch'"):
        ModelConfig().with_overrides({"training.epoch": 3})
    with pytest.raises(ConfigError, match="method_options"):
        ModelConfig().with_overrides({"method_options.bogus": 1})


def test_validation_cadence_precedence_and_at_least_one():
    from hazematching.config import TrainingConfig

    assert TrainingConfig().val_cadence == ("minutes", 5.0)
    assert TrainingConfig(val_every_n_epochs=2).val_cadence == ("epochs", 2)
    assert TrainingConfig(val_every_n_epochs=2, val_every_n_steps=100).val_cadence == (
        "steps", 100)
    with pytest.raises(ValueError, match="set one of val_every_n_steps, val_every_n_epochs or "
                                         "val_every_minutes"):
        TrainingConfig(val_every_minutes=None)
    with pytest.raises(ConfigError, match="training.val_every_n_steps"):
        ModelConfig().with_overrides({"training.val_every_n_steps": 0})
