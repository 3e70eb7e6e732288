"""ModelConfig: defaults, round trip, and key-path errors."""

from __future__ import annotations

import pytest

from stagewatch.errors import ConfigError
from trainer.models import ModelConfig
from trainer.models.presets import TINY, load_model_config


def test_defaults_are_the_full_deblurring_size() -> None:
    cfg = ModelConfig()
    assert cfg.VRT.EMBED_DIMS == [96] * 7 + [120] * 4
    assert cfg.VRT.DEPTHS == [8] * 7 + [4] * 4
    assert cfg.VRT.WINDOW_SIZE == [6, 8, 8] and cfg.VRT.DEFORMABLE_GROUPS == 16
    assert cfg.SPIKE.WIDTH == 96 and cfg.SPIKE.BINS == 5 and cfg.USE_SPIKE
    assert ModelConfig.from_dict(None) == cfg == ModelConfig.from_dict({})


def test_round_trip() -> None:
    cfg = load_model_config(TINY)
    d = cfg.to_dict()
    assert ModelConfig.from_dict(d) == cfg
    d["VRT"]["DEPTHS"][0] = 99  # to_dict copies lists
    assert cfg.VRT.DEPTHS[0] == 2


def test_integers_accepted_for_floats() -> None:
    cfg = ModelConfig.from_dict({"VRT": {"MLP_RATIO": 2, "DROP_PATH_RATE": 0}})
    assert isinstance(cfg.VRT.MLP_RATIO, float) and cfg.VRT.MLP_RATIO == 2.0


@pytest.mark.parametrize(
    ("section", "key", "text"),
    [
        ({"USE_SPIKES": True}, "MODEL.USE_SPIKES", "did you mean USE_SPIKE?"),
        ({"SPIKE": {"bins": 5}}, "MODEL.SPIKE.bins", "did you mean BINS?"),
        ({"VRT": 3}, "MODEL.VRT", "expected a mapping"),
        ({"VRT": {"DEPTHS": [2, "x"]}}, "MODEL.VRT.DEPTHS[1]", "expected an integer"),
        ({"VRT": {"DEPTHS": 2}}, "MODEL.VRT.DEPTHS", "expected a list"),
        ({"VRT": {"DEPTHS": [2] * 7}}, "MODEL.VRT.DEPTHS", "at least 8"),
        ({"VRT": {"EMBED_DIMS": [96] * 10}}, "MODEL.VRT.EMBED_DIMS", "needs 11 entries"),
        ({"VRT": {"EMBED_DIMS": [96] * 6 + [48] + [120] * 4}}, "MODEL.VRT.EMBED_DIMS", "equal"),
        ({"VRT": {"DEPTHS": [0] + [8] * 10}}, "MODEL.VRT.DEPTHS[0]", ">= 1"),
        ({"VRT": {"WINDOW_SIZE": [6, 8]}}, "MODEL.VRT.WINDOW_SIZE", "frames, height, width"),
        ({"VRT": {"WINDOW_SIZE": [1, 8, 8]}}, "MODEL.VRT.WINDOW_SIZE", ">= 2"),
        ({"VRT": {"INDEP_RECONSTS": [3]}}, "MODEL.VRT.INDEP_RECONSTS[0]", "reconstruction"),
        ({"VRT": {"DEFORMABLE_GROUPS": 7}}, "MODEL.VRT.DEFORMABLE_GROUPS", "divide"),
        ({"VRT": {"PA_FRAMES": 4}}, "MODEL.VRT.PA_FRAMES", "only 2"),
        ({"VRT": {"MUTUAL_RATIO": 1.5}}, "MODEL.VRT.MUTUAL_RATIO", "[0, 1]"),
        ({"VRT": {"DROP_PATH_RATE": 1.0}}, "MODEL.VRT.DROP_PATH_RATE", "[0, 1)"),
        ({"VRT": {"USE_CHECKPOINT_ATTN": "yes"}}, "MODEL.VRT.USE_CHECKPOINT_ATTN", "true or false"),
        ({"VRT": {"MLP_RATIO": True}}, "MODEL.VRT.MLP_RATIO", "expected a number"),
        ({"SPIKE": {"TSA_HEADS": 5}}, "MODEL.SPIKE.TSA_HEADS", "do not divide"),
        ({"SPIKE": {"FUSION_HEADS": 5}}, "MODEL.SPIKE.FUSION_HEADS", "do not divide"),
        ({"SPIKE": {"BINS": 0}}, "MODEL.SPIKE.BINS", ">= 1"),
        ({"SPIKE": {"TSA_CHUNK_TOKENS": 0}}, "MODEL.SPIKE.TSA_CHUNK_TOKENS", ">= 1"),
        ({"FLOW_WEIGHTS": 5}, "MODEL.FLOW_WEIGHTS", "file path or null"),
    ],
)
def test_errors_name_the_key(section: dict, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict(section, "cfg.yaml")
    assert e.value.key == key and e.value.file == "cfg.yaml"
    assert text in e.value.detail
    assert str(e.value).startswith(f"cfg.yaml: {key}: ")


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        ModelConfig.from_dict([1, 2])  # type: ignore[arg-type]
