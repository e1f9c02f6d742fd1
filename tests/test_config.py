from __future__ import annotations

import dataclasses

import pytest

from tumorlib.core.config import PRESETS, Config, get_config, load_config, parse_field, preset_name, workspace


def test_full_preset_is_the_seed_table():
    cfg = PRESETS["full"]
    assert cfg.patch_size == (64, 160, 160)
    assert cfg.features == (32, 64, 128, 256)
    assert (cfg.batch_size, cfg.accumulation_steps) == (2, 2)
    assert cfg.lr == 2e-4 and cfg.warmup_epochs == 5 and cfg.epochs == 50
    assert cfg.class_weights == (1.5, 1.0, 2.0)
    assert cfg.tumor_prob == 0.6 and cfg.cache_hw == 240 and cfg.synth_shape == (155, 240, 240)
    assert cfg.focal_gamma == 2.0 and cfg.sw_overlap == 0.5 and cfg.augment and not cfg.intensity_aug
    assert cfg.tumor_sampling == "class" and cfg.val_volume_every == 5


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
    from tumorlib.core.config import resume_fields, runtime_fields

    runtime = {"cache_workers", "ram_cache_bytes", "num_workers", "time_limit_h", "compile", "cudnn_benchmark", "data_placement",
               "pin_memory", "sw_overlap", "sw_batch_size", "sw_blend", "threshold", "et_min_voxels"}
    training = {"preset", "seed", "synth_volumes", "synth_shape", "synth_seed", "cache_hw", "cache_margin",
                "patch_size", "tumor_prob", "tumor_sampling", "augment", "intensity_aug", "in_channels", "num_classes", "features", "epochs",
                "warmup_epochs", "batch_size", "accumulation_steps", "lr", "min_lr_ratio", "weight_decay",
                "samples_per_epoch", "val_samples", "val_volume_every", "class_weights", "focal_gamma", "dice_weight", "grad_clip",
                "amp", "amp_dtype", "val_fraction", "test_fraction", "split_seed", "fold", "folds",
                "kaggle_channel_order", "targets"}
    assert runtime_fields() == runtime
    assert resume_fields() == training
    assert {f.name for f in dataclasses.fields(Config)} == runtime | training


def test_gpu_speed_fields_default_to_auto_and_check_their_values():
    cfg = get_config("demo")
    assert (cfg.amp_dtype, cfg.compile, cfg.cudnn_benchmark, cfg.data_placement, cfg.pin_memory) == ("auto",) * 5
    assert get_config("ci").amp_dtype == "float32"  # committed notebook outputs must not depend on the CPU
    assert get_config("ci", compile=True).compile == "default"  # configs saved before "auto" held a bool
    assert get_config("ci", compile=False).compile == "off"
    assert parse_field("compile", "reduce-overhead") == "reduce-overhead"
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        get_config("ci", amp_dtype="float8")
    with pytest.raises(ValueError, match="data_placement must be one of"):
        get_config("ci", data_placement="disk")


BAD_VALUES = [
    ("threshold", 2.0, r"threshold must lie in \(0, 1\), got 2.0"),
    ("threshold", 0.0, r"threshold must lie in \(0, 1\)"),
    ("et_min_voxels", -1, r"et_min_voxels must be >= 0, got -1"),
    ("et_min_voxels", 2.5, r"et_min_voxels must be a finite integer"),
    ("folds", 1, r"fold and folds: need folds >= 2"),
    ("folds", -2, r"folds must be >= 0, got -2"),
    ("fold", -1, r"fold must be >= 0, got -1"),
    ("fold", 1, r"fold and folds: need folds >= 2 and 0 <= fold < folds"),
    ("sw_blend", "foo", r"sw_blend must be one of gaussian, constant, got 'foo'"),
    ("sw_overlap", 1.0, r"sw_overlap must lie in \[0, 1\)"),
    ("sw_batch_size", 0, r"sw_batch_size must be >= 1, got 0"),
    ("lr", 0.0, r"lr must be > 0, got 0.0"),
    ("lr", float("nan"), r"lr must be a finite number, got nan"),
    ("lr", "0.1", r"lr must be a finite number, got '0.1'"),
    ("epochs", 0, r"epochs must be >= 1, got 0"),
    ("epochs", 2.5, r"epochs must be a finite integer, got 2.5"),
    ("epochs", True, r"epochs must be a finite integer, got True"),
    ("batch_size", -1, r"batch_size must be >= 1"),
    ("accumulation_steps", 0, r"accumulation_steps must be >= 1"),
    ("synth_seed", -3, r"synth_seed must be >= 0"),
    ("warmup_epochs", -1, r"warmup_epochs must be >= 0"),
    ("patch_size", (0, 32, 32), r"patch_size must be >= 1, got 0"),
    ("patch_size", (16, 32), r"patch_size must be 3 values \(D, H, W\), got \(16, 32\)"),
    ("synth_shape", (8, 16, -16), r"synth_shape must be >= 1, got -16"),
    ("synth_volumes", 0, r"synth_volumes must be >= 1"),
    ("features", (), r"features must be a non-empty list"),
    ("features", (8, 8, 16), r"features must increase strictly"),
    ("features", (8, 0, 16), r"features must be >= 1, got 0"),
    ("tumor_prob", 1.5, r"tumor_prob must lie in \[0, 1\]"),
    ("val_fraction", 1.0, r"val_fraction must lie in \[0, 1\)"),
    ("test_fraction", -0.1, r"test_fraction must lie in \[0, 1\)"),
    ("min_lr_ratio", 2.0, r"min_lr_ratio must lie in \[0, 1\]"),
    ("dice_weight", -0.5, r"dice_weight must lie in \[0, 1\]"),
    ("weight_decay", -1e-5, r"weight_decay must be >= 0"),
    ("focal_gamma", float("inf"), r"focal_gamma must be a finite number"),
    ("grad_clip", -1.0, r"grad_clip must be >= 0"),
    ("class_weights", (1.0, -1.0, 1.0), r"class_weights must be >= 0, got -1.0"),
    ("class_weights", (1.0, 1.0), r"class_weights has 2 entries for num_classes=3"),
    ("cache_hw", 0, r"cache_hw must be >= 1, got 0"),
    ("cache_margin", -2, r"cache_margin must be >= 0"),
    ("cache_workers", 0, r"cache_workers must be >= 1"),
    ("num_workers", -1, r"num_workers must be >= 0"),
    ("samples_per_epoch", 0, r"samples_per_epoch must be >= 1"),
    ("val_samples", 0, r"val_samples must be >= 1"),
    ("ram_cache_bytes", -1, r"ram_cache_bytes must be >= 0"),
    ("in_channels", 0, r"in_channels must be >= 1"),
    ("num_classes", 0, r"num_classes must be >= 1"),
    ("seed", -1, r"seed must be >= 0"),
    ("split_seed", 1.5, r"split_seed must be a finite integer"),
    ("augment", "yes", r"augment must be true or false, got 'yes'"),
    ("intensity_aug", 1, r"intensity_aug must be true or false, got 1"),
    ("tumor_sampling", "tumour", r"tumor_sampling must be one of class, voxel, got 'tumour'"),
    ("targets", "labels", r"targets must be one of classes, regions, got 'labels'"),
    ("val_volume_every", -1, r"val_volume_every must be >= 0, got -1"),
    ("amp", 1, r"amp must be true or false, got 1"),
    ("time_limit_h", -1.0, r"time_limit_h must be >= 0, got -1.0"),
    ("time_limit_h", "8h", r"time_limit_h must be a finite number, got .8h."),
    ("compile", "fast", r"compile must be one of auto, off, default"),
    ("amp_dtype", "float8", r"amp_dtype must be one of auto, bfloat16"),
    ("cudnn_benchmark", "yes", r"cudnn_benchmark must be one of auto, on, off"),
    ("data_placement", "disk", r"data_placement must be one of auto, device, loader"),
    ("pin_memory", True, r"pin_memory must be one of auto, on, off"),
    ("kaggle_channel_order", ("t1", "t1", "t2", "flair"), r"t1 given more than once"),
    ("preset", "", r"preset must be a name"),
]


@pytest.mark.parametrize("field,value,message", BAD_VALUES, ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_bad_value_fails_at_construction(field, value, message):
    with pytest.raises(ValueError, match=message) as info:
        get_config("ci").replace(**{field: value})
    assert "\n" not in str(info.value)


def test_every_field_has_a_rule_and_every_preset_is_valid():
    import dataclasses

    from tumorlib.core.config_checks import CHOICES, RULES

    names = {f.name for f in dataclasses.fields(Config)}
    assert names - set(RULES) - set(CHOICES) == {"preset", "kaggle_channel_order"}
    assert {f for f, _, _ in BAD_VALUES} == names  # each field has at least one failing case above
    for name, cfg in PRESETS.items():
        assert Config.from_dict(cfg.to_dict()) == cfg, name


def test_numbers_are_normalised():
    import numpy as np

    cfg = get_config("ci", lr=1, epochs=np.int64(3), patch_size=[8, 16, 16], cache_hw=None)
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert type(cfg.epochs) is int and cfg.patch_size == (8, 16, 16) and cfg.cache_hw is None


def test_cli_rejects_bad_config_value_in_one_line(capsys):
    from tumorlib.app.cli import main

    assert main(["train", "--preset", "ci", "--threshold", "2"]) == 2
    err = capsys.readouterr().err
    assert err == "tumorlib train: error: config field threshold must lie in (0, 1), got 2.0\n"
