from __future__ import annotations

import dataclasses

import pytest

from tumorlib.config import PRESETS, Config, get_config, load_config, parse_field, preset_name, workspace


def test_full_preset_is_the_seed_table():
    cfg = PRESETS["full"]
    assert cfg.patch_size == (64, 160, 160)
    assert cfg.features == (32, 64, 128, 256)
    assert (cfg.batch_size, cfg.accumulation_steps) == (2, 2)
    assert cfg.lr == 2e-4 and cfg.warmup_epochs == 5 and cfg.epochs == 50
    assert cfg.class_weights == (1.5, 1.0, 2.0)
    assert cfg.tumor_prob == 0.6 and cfg.cache_hw == 240 and cfg.synth_shape == (155, 240, 240)
    assert cfg.focal_gamma == 2.0 and cfg.sw_overlap == 0.5 and not cfg.augment


def test_preset_from_environment(monkeypatch):
    monkeypatch.delenv("TUMORLIB_PRESET", raising=False)
    assert preset_name() == "demo"
    monkeypatch.setenv("TUMORLIB_PRESET", "ci")
    assert get_config().preset == "ci"
    assert get_config("full").preset == "full"
    monkeypatch.setenv("TUMORLIB_PRESET", "huge")
    with pytest.raises(ValueError, match="huge"):
        get_config()


def test_overrides_and_validation():
    cfg = get_config("ci", epochs=7, patch_size=[8, 16, 16])
    assert cfg.epochs == 7 and cfg.patch_size == (8, 16, 16)
    with pytest.raises(ValueError, match="unknown config field"):
        get_config("ci", epoch=3)
    with pytest.raises(ValueError, match="tumor_prob"):
        get_config("ci", tumor_prob=1.5)
    with pytest.raises(ValueError, match="class_weights"):
        get_config("ci", class_weights=(1.0, 2.0))
    with pytest.raises(Exception):
        cfg.epochs = 3  # frozen


def test_json_round_trip(tmp_path):
    cfg = get_config("demo", lr=1e-3, num_workers=None)
    path = cfg.save(tmp_path / "run" / "config.json")
    assert load_config(path) == cfg
    (tmp_path / "bad.json").write_text('{"nope": 1}')
    with pytest.raises(ValueError, match="bad.json"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [("epochs", "3", 3), ("lr", "1e-3", 1e-3), ("patch_size", "8,16,16", (8, 16, 16)),
     ("features", "4 8 16 32", (4, 8, 16, 32)), ("amp", "false", False), ("cache_hw", "none", None),
     ("sw_blend", "constant", "constant")],
)
def test_parse_field(name, text, expected):
    assert parse_field(name, text) == expected


def test_parse_field_errors():
    with pytest.raises(ValueError, match="--epochs"):
        parse_field("epochs", "three")
    with pytest.raises(ValueError, match="--amp"):
        parse_field("amp", "maybe")
    with pytest.raises(ValueError, match="unknown"):
        parse_field("nope", "1")


def test_workspace_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("TUMORLIB_HOME", str(tmp_path / "home"))
    cfg = get_config("ci")
    ws = workspace(cfg)
    assert ws.synthetic
    assert ws.data_dir == (tmp_path / "home" / "data" / "synthetic_8x24x48x48_seed0").resolve()
    assert ws.out_dir == (tmp_path / "home" / "outputs" / "ci").resolve()
    assert ws.cache_dir == ws.out_dir / "cache" and ws.run_dir == ws.out_dir / "run"
    monkeypatch.setenv("TUMORLIB_DATA", str(tmp_path / "brats"))
    monkeypatch.setenv("TUMORLIB_OUT", str(tmp_path / "out"))
    ws = workspace(cfg)
    assert not ws.synthetic and ws.data_dir == (tmp_path / "brats").resolve()
    assert ws.fig_dir == (tmp_path / "out" / "figures").resolve()


def test_table_lists_every_field():
    text = Config().table()
    assert "patch_size" in text and "(64, 160, 160)" not in text and "[64, 160, 160]" in text


def test_every_config_field_is_classified_for_resume():
    """A new field must be placed on purpose: runtime (may differ on resume) or training (must match)."""
    from tumorlib.config import resume_fields, runtime_fields

    runtime = {"cache_workers", "ram_cache_bytes", "num_workers", "compile", "cudnn_benchmark", "data_placement",
               "pin_memory", "sw_overlap", "sw_batch_size", "sw_blend", "threshold"}
    training = {"preset", "seed", "synth_volumes", "synth_shape", "synth_seed", "cache_hw", "cache_margin",
                "patch_size", "tumor_prob", "augment", "in_channels", "num_classes", "features", "epochs",
                "warmup_epochs", "batch_size", "accumulation_steps", "lr", "min_lr_ratio", "weight_decay",
                "samples_per_epoch", "val_samples", "class_weights", "focal_gamma", "dice_weight", "grad_clip",
                "amp", "amp_dtype", "val_fraction", "test_fraction", "split_seed", "kaggle_channel_order"}
    assert runtime_fields() == runtime
    assert resume_fields() == training
    assert {f.name for f in dataclasses.fields(Config)} == runtime | training


def test_gpu_speed_fields_default_to_auto_and_check_their_values():
    cfg = get_config("ci")
    assert (cfg.amp_dtype, cfg.compile, cfg.cudnn_benchmark, cfg.data_placement, cfg.pin_memory) == ("auto",) * 5
    assert get_config("ci", compile=True).compile == "default"  # configs saved before "auto" held a bool
    assert get_config("ci", compile=False).compile == "off"
    assert parse_field("compile", "reduce-overhead") == "reduce-overhead"
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        get_config("ci", amp_dtype="float8")
    with pytest.raises(ValueError, match="data_placement must be one of"):
        get_config("ci", data_placement="disk")
