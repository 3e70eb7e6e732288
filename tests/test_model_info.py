"""``trainer info``: parameter counts, shapes and region tree; one-line errors, exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from trainer.cli import main
from trainer.models import ModelConfig, region_names
from trainer.models.presets import FULL, TINY


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["info", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_text_full_config(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "--cfg", str(FULL))
    assert rc == 0 and err == ""
    assert "vrt 18,619,911 = plain VRT 18,320,007 + spike fusion 299,904" in out
    assert "rgb [1, 5, 3, 256, 256]" in out and "spikes [1, 5, 5, 256, 256]" in out
    assert any(line.split()[:2] == ["stage8", "2,528,472"] for line in out.splitlines())
    assert any(line.split()[:2] == ["spike_encoder", "4,742,688"] for line in out.splitlines())
    assert "recompute" in out and "chunk" in out


def test_json_with_data_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["MODEL"]["VRT"]["USE_CHECKPOINT_ATTN"] = True
    cfg["DATA"] = {"CLIP_LEN": 6, "CROP_SIZE": [64, 96], "ROOT": "x"}
    cfg["TRAIN"] = {"BATCH_SIZE": 2}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc, out, _ = run(capsys, "--cfg", str(path), "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["inputs"] == {"rgb": [2, 6, 3, 64, 96], "spikes": [2, 6, 5, 64, 96]}
    assert info["features"]["vrt/stage4"] == [2, 6, 8, 12, 16]
    mcfg = ModelConfig.from_dict(cfg["MODEL"])
    assert info["regions"] == region_names(mcfg, checkpointing=True)
    assert info["params"]["total"] == sum(
        v for k, v in info["params"]["modules"].items() if "/" not in k
    )
    assert info["params"]["spike_branch"] + info["params"]["vrt"] == info["params"]["total"]


def test_whole_frame_crop_shows_default_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "whole.yaml"
    path.write_text("MODEL: {}\nDATA:\n  CROP_SIZE: 0\n  CLIP_LEN: 3\n")
    rc, out, _ = run(capsys, "--cfg", str(path), "--json")
    assert rc == 0 and json.loads(out)["inputs"]["rgb"] == [1, 3, 3, 256, 256]


def test_plain_vrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(
        "MODEL:\n  USE_SPIKE: false\n  VRT:\n    USE_CHECKPOINT_ATTN: false\n"
        "    USE_CHECKPOINT_FFN: false\n"
    )
    rc, out, _ = run(capsys, "--cfg", str(path), "--json")
    info = json.loads(out)
    assert rc == 0 and info["params"]["total"] == 18_320_007
    assert "spikes" not in info["inputs"]
    assert not any("spike" in r or "fusion" in r or "recompute" in r for r in info["regions"])


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (None, "no such file"),
        ("MODEL: [\n", "line 2"),
        ("DATA: {}\n", "MODEL: section missing"),
        (
            "MODEL:\n  VRT:\n    DEPHTS: [2]\n",
            "MODEL.VRT.DEPHTS: unknown key; did you mean DEPTHS?",
        ),
        ("MODEL:\n  USE_SPIKE: 3\n", "MODEL.USE_SPIKE: expected true or false"),
        (
            "MODEL:\n  VRT:\n    NUM_HEADS: [5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6]\n",
            "MODEL.VRT.NUM_HEADS[0]: 5 heads do not divide",
        ),
        ("MODEL: {}\nDATA:\n  CROP_SIZE: 100\n", "DATA.CROP_SIZE"),
        ("MODEL: {}\nDATA:\n  CLIP_LEN: 1\n", "DATA.CLIP_LEN"),
        ("- 1\n", "must hold a mapping"),
    ],
)
def test_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, expect: str
) -> None:
    path = tmp_path / "cfg.yaml"
    if text is not None:
        path.write_text(text)
    rc, out, err = run(capsys, "--cfg", str(path))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and expect in err, err
    if text is not None:
        assert str(path) in err


def test_header_and_table_group_parameters_the_same_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # issue 20: the header said VRT 18,320,007 (fusions moved to the spike branch) while the
    # table's vrt row, which holds the fusions, said 18,619,911
    rc, out, _ = run(capsys, "--cfg", str(TINY))
    assert rc == 0
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\S+)\s+([\d,]+)\s+[\d.]+%$", line)
        if m:
            rows[m.group(1)] = int(m.group(2).replace(",", ""))
    head = out.splitlines()[1]
    m = re.search(
        r"\(vrt ([\d,]+) = plain VRT [\d,]+ \+ spike fusion ([\d,]+); "
        r"spike_encoder \+ spike_tsa ([\d,]+)\)",
        head,
    )
    assert m, head
    vrt, fusion, spike = (int(g.replace(",", "")) for g in m.groups())
    assert vrt == rows["vrt"]
    assert spike == rows["spike_encoder"] + rows["spike_tsa"]
    fusions = [
        int(x.split()[1].replace(",", ""))
        for x in out.splitlines()
        if re.match(r"^\s+fusion\d\s+[\d,]+", x)
    ]
    assert fusion == sum(fusions) > 0
