"""tumorlib.io.layouts: every BraTS-family layout detected, read, cached and scored, on tiny phantom cases."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumorlib.core.label_conventions import LABEL_CONVENTIONS, channels_to_convention
from tumorlib.io.layouts import LAYOUT_CONVENTIONS, LAYOUTS, case_from_path, detect_layout, list_cases
from tumorlib.io.nifti import load_nifti_case, nifti_header

SHAPE = (24, 48, 48)  # (D, H, W)
AFFINE = np.diag([-2.0, -2.0, 2.0, 1.0])
MSD_ORDER = ("flair", "t1", "t1ce", "t2")  # MSD Task01's 4-D channel order
_2020 = dict(zip(("t1", "t1ce", "t2", "flair"), ("_t1", "_t1ce", "_t2", "_flair")))
_2023 = dict(zip(("t1", "t1ce", "t2", "flair"), ("-t1n", "-t1c", "-t2w", "-t2f")))
MSD_JSON = {"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}


@pytest.fixture(scope="module")
def phantoms():
    from tumorlib.data.synthetic import make_phantom

    return {vid: make_phantom(SHAPE, seed=5, volume_id=vid) for vid in (1, 2)}


def _nifti(volume: np.ndarray) -> np.ndarray:
    """tumorlib (D, H, W) [or (C, D, H, W)] -> NIfTI (H, W, D) [or (H, W, D, C)]."""
    return np.transpose(volume, (1, 2, 0)) if volume.ndim == 3 else np.transpose(volume, (2, 3, 1, 0))


def _save(array: np.ndarray, path: Path, dtype: type = np.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(_nifti(array).astype(dtype), AFFINE), str(path))


def case_name(layout: str, vid: int) -> str:
    return {"brats2020": f"BraTS20_Training_{vid:03d}", "brats2021": f"BraTS2021_{vid:05d}",
            "brats2023": f"BraTS-GLI-{vid:05d}-000", "msd": f"BRATS_{vid:03d}"}[layout]


def write_case(root: Path, layout: str, vid: int, image: np.ndarray, mask: np.ndarray | None) -> Path:
    """One case of ``layout`` under ``root`` from a canonical (4, D, H, W) image and (3, D, H, W) mask."""
    name = case_name(layout, vid)
    labels = None if mask is None else channels_to_convention(mask, LAYOUT_CONVENTIONS[layout])
    if layout == "msd":
        (root / "dataset.json").parent.mkdir(parents=True, exist_ok=True)
        (root / "dataset.json").write_text(json.dumps(MSD_JSON))
        _save(image[[("t1", "t1ce", "t2", "flair").index(k) for k in MSD_ORDER]], root / "imagesTr" / f"{name}.nii.gz")
        if labels is not None:
            _save(labels, root / "labelsTr" / f"{name}.nii.gz", np.uint8)
        return root / "imagesTr" / f"{name}.nii.gz"
    sep = _2023 if layout == "brats2023" else _2020
    folder = root / name
    for c, key in enumerate(("t1", "t1ce", "t2", "flair")):
        _save(image[c], folder / f"{name}{sep[key]}.nii.gz")
    if labels is not None:
        _save(labels, folder / f"{name}{'-seg' if layout == 'brats2023' else '_seg'}.nii.gz", np.uint8)
    return folder


def write_set(root: Path, layout: str, phantoms: dict) -> Path:
    for vid, (image, mask) in phantoms.items():
        write_case(root, layout, vid, image, mask)
    return root


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_is_detected_and_read_in_canonical_order(tmp_path, phantoms, layout):
    root = write_set(tmp_path / layout, layout, phantoms)
    assert detect_layout(root) == layout
    cases = list_cases(root)
    want_ids = [1000, 2000] if layout == "brats2023" else [1, 2]
    assert list(cases) == want_ids and {c.layout for c in cases.values()} == {layout}
    image, mask, affine = load_nifti_case(cases[want_ids[1]])
    np.testing.assert_allclose(image, phantoms[2][0], rtol=1e-6)  # T1, T1ce, T2, FLAIR
    np.testing.assert_array_equal(mask, phantoms[2][1])  # ncr, ed, et from the layout's labels
    np.testing.assert_allclose(affine, AFFINE)
    assert nifti_header(cases[want_ids[0]]).get_best_affine().shape == (4, 4)
    assert case_from_path(str(cases[want_ids[0]])).volume_id == want_ids[0]


def test_resection_cavity_of_a_2024_case_is_background(tmp_path, phantoms):
    image, mask = phantoms[1]
    folder = write_case(tmp_path, "brats2023", 1, image, mask)
    seg = folder / "BraTS-GLI-00001-000-seg.nii.gz"
    labels = np.transpose(np.asarray(nib.load(str(seg)).dataobj), (2, 0, 1)).copy()
    labels[:2, :2, :2] = 4  # the 2024 post-treatment resection cavity
    _save(labels, seg, np.uint8)
    _img, read, _aff = load_nifti_case(folder)
    assert not read[:, :2, :2, :2].any()


def test_mixed_and_unknown_folders_are_one_line_errors(tmp_path, phantoms):
    image, mask = phantoms[1]
    write_case(tmp_path / "mixed", "brats2020", 1, image, mask)
    write_case(tmp_path / "mixed", "brats2023", 2, image, mask)
    with pytest.raises(ValueError, match=r"mixed layouts \(brats2020: 1 cases \(e.g. BraTS20_Training_001\); "
                                         r"brats2023: 1 cases"):
        detect_layout(tmp_path / "mixed")
    unknown = tmp_path / "unknown" / "case1"
    unknown.mkdir(parents=True)
    _save(image[0], unknown / "case1_T1-weighted.nii.gz")
    with pytest.raises(FileNotFoundError, match="no NIfTI case of a known layout.*brats2021.*msd"):
        detect_layout(unknown.parent)
    with pytest.raises(ValueError, match="unknown layout 'brats2019'"):
        list_cases(tmp_path / "mixed", "brats2019")


def test_a_named_layout_reads_only_its_files(tmp_path, phantoms):
    image, mask = phantoms[1]
    root = tmp_path / "plain"
    write_case(root, "brats2021", 1, image, mask)
    (root / "BraTS2021_00001").rename(root / "case_7")  # folder name no longer says 2021
    assert detect_layout(root) == "brats2020"
    assert list(list_cases(root, "brats2021")) == [7]
    with pytest.raises(FileNotFoundError, match="no brats2023 case folders"):
        list_cases(root, "brats2023")


def test_msd_dataset_json_is_checked(tmp_path, phantoms):
    root = write_set(tmp_path / "msd", "msd", {1: phantoms[1]})
    bad = dict(MSD_JSON, labels={"0": "background", "1": "necrosis", "2": "edema", "3": "enhancing"})
    (root / "dataset.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"dataset.json: labels .* are not MSD Task01's"):
        list_cases(root)
    (root / "dataset.json").write_text(json.dumps(dict(MSD_JSON, modality={"0": "FLAIR", "1": "T1w"})))
    with pytest.raises(ValueError, match="dataset.json: channel order"):
        list_cases(root)


@pytest.mark.parametrize("layout", ["brats2023", "msd"])
def test_cache_records_layout_and_convention(tmp_path, phantoms, layout):
    from tumorlib.data.cache import load_cache_index, load_cached_volume
    from tumorlib.data.cache.nifti import build_nifti_cache
    from tumorlib.data.cache.readers import open_source

    root = write_set(tmp_path / layout, layout, phantoms)
    cache = build_nifti_cache(root, tmp_path / "cache", workers=1, progress=False)
    index = load_cache_index(cache)
    assert index["layout"] == layout and index["label_convention"] == LAYOUT_CONVENTIONS[layout]
    vid = index["volume_ids"][0]
    _img, mask_c = load_cached_volume(cache, vid)
    assert mask_c.shape[0] == 3 and int(np.asarray(mask_c).sum()) > 0
    image, mask = open_source(index).read(vid)
    np.testing.assert_array_equal(mask, phantoms[1][1])
    assert LABEL_CONVENTIONS[index["label_convention"]].name == index["label_convention"]


# --- predict writes the input's convention, evaluate reads each side's ----------------------------------

def _shifted(mask: np.ndarray) -> np.ndarray:
    """A 'prediction': the reference mask moved by two voxels along W."""
    return np.roll(mask, 2, axis=3)


@pytest.mark.parametrize("convention", ["brats2020", "brats2023", "msd"])
def test_evaluate_label_files_in_each_convention_gives_the_2020_scores(tmp_path, phantoms, convention):
    from tumorlib.app.cli import main

    names = {"brats2020": "BraTS20_Training_{:03d}", "brats2023": "BraTS-GLI-{:05d}-000", "msd": "BRATS_{:03d}"}
    for conv, folder in ((convention, "conv"), ("brats2020", "ref2020")):
        for vid, (_image, mask) in phantoms.items():
            name = names[convention].format(vid)  # the same case names on both sides: only the labels differ
            _save(channels_to_convention(_shifted(mask), conv), tmp_path / folder / "pred" / f"{name}.nii.gz", np.uint8)
            _save(channels_to_convention(mask, conv), tmp_path / folder / "ref" / f"{name}.nii.gz", np.uint8)
    flags = ["--pred-labels", "brats2020", "--ref-labels", "brats2020"]
    assert main(["evaluate", "--pred", str(tmp_path / "ref2020" / "pred"), "--ref", str(tmp_path / "ref2020" / "ref"),
                 "--out", str(tmp_path / "a.csv"), "--quiet", *flags]) == 0
    assert main(["evaluate", "--pred", str(tmp_path / "conv" / "pred"), "--ref", str(tmp_path / "conv" / "ref"),
                 "--out", str(tmp_path / "b.csv"), "--quiet",
                 *(["--pred-labels", convention, "--ref-labels", convention] if convention == "brats2020" else [])]) == 0
    import pandas as pd

    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert (a["dice_wt"] < 1).all()  # not a trivial match
    pd.testing.assert_frame_equal(a, b)


def test_evaluate_refuses_ambiguous_labels(tmp_path, phantoms, capsys):
    from tumorlib.app.cli import main

    mask = phantoms[2][1]  # volume 2 has enhancing tumour (3)
    _save(channels_to_convention(mask, "brats2023"), tmp_path / "pred" / "case1.nii.gz", np.uint8)
    _save(channels_to_convention(mask, "brats2023"), tmp_path / "ref" / "case1.nii.gz", np.uint8)
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(tmp_path / "m.csv"),
            "--quiet"]
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("case1.nii.gz: labels [0, 1, 2, 3] fit brats2023 and msd; name the "
                                            "convention (--labels / --pred-labels / --ref-labels)")
    assert main([*args, "--pred-labels", "brats2023", "--ref-labels", "brats2023"]) == 0


@pytest.mark.parametrize("layout,written", [("brats2023", {0, 3}), ("msd", {0, 3}), ("brats2021", {0, 4})])
def test_predict_writes_the_input_convention_and_header(tmp_path, phantoms, layout, written):
    from constant_runs import make_run

    from tumorlib.app.cli import main

    run = make_run(tmp_path / "run", bias=[-9.0, -9.0, 9.0])  # enhancing wherever the brain crop is
    image, mask = phantoms[1]
    case = write_case(tmp_path / "data", layout, 1, image, mask)
    out = tmp_path / "pred" / f"{case_name(layout, 1)}.nii.gz"
    assert main(["predict", "--run", str(run), "--nifti", str(case), "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    img = nib.load(str(out))
    assert img.shape == (SHAPE[1], SHAPE[2], SHAPE[0]) and set(np.unique(np.asarray(img.dataobj)).tolist()) == written
    np.testing.assert_allclose(img.affine, AFFINE)
    other = tmp_path / "pred2020.nii.gz"
    assert main(["predict", "--run", str(run), "--nifti", str(case), "--out", str(other), "--quiet",
                 "--device", "cpu", "--labels", "brats2020"]) == 0
    assert set(np.unique(np.asarray(nib.load(str(other)).dataobj)).tolist()) == {0, 4}


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_end_to_end_cache_train_predict_score(tmp_path, layout):
    """Cached, trained on (ci, one epoch), predicted and scored: `evaluate --pred/--ref` on the label files
    `predict` wrote, in the layout's own convention, gives the Dice `evaluate --run` gives on the cache."""
    import pandas as pd

    from tumorlib.app.cli import main
    from tumorlib.data.synthetic import make_phantom

    root, refs, preds = tmp_path / "data", tmp_path / "refs", tmp_path / "preds"
    refs.mkdir()
    for vid in range(1, 6):
        image, mask = make_phantom(SHAPE, seed=11, volume_id=vid)
        write_case(root, layout, vid, image, mask)
        _save(channels_to_convention(mask, LAYOUT_CONVENTIONS[layout]), refs / f"{case_name(layout, vid)}.nii.gz",
              np.uint8)
    cache, run = tmp_path / "cache", tmp_path / "run"
    quiet = ["--quiet"]
    assert main(["cache", "--nifti", str(root), "--out", str(cache), "--workers", "1", *quiet]) == 0
    assert main(["train", "--preset", "ci", "--cache", str(cache), "--out", str(run), "--epochs", "1",
                 "--device", "cpu", *quiet]) == 0
    assert main(["evaluate", "--run", str(run), "--cache", str(cache), "--split", "all", "--device", "cpu",
                 "--out", str(tmp_path / "run.csv"), *quiet]) == 0
    for case in list_cases(root).values():
        target = root / "imagesTr" / f"{case.name}.nii.gz" if layout == "msd" else root / case.name
        assert main(["predict", "--run", str(run), "--nifti", str(target), "--device", "cpu",
                     "--out", str(preds / f"{case.name}.nii.gz"), *quiet]) == 0
    assert main(["evaluate", "--pred", str(preds), "--ref", str(refs), "--out", str(tmp_path / "files.csv"),
                 "--pred-labels", LAYOUT_CONVENTIONS[layout], "--ref-labels", LAYOUT_CONVENTIONS[layout], *quiet]) == 0
    by_run = pd.read_csv(tmp_path / "run.csv")
    by_files = pd.read_csv(tmp_path / "files.csv")
    assert len(by_files) == len(by_run) == 5
    for column in ("dice_wt", "dice_tc", "dice_et"):
        np.testing.assert_allclose(sorted(by_files[column]), sorted(by_run[column]), atol=1e-3, err_msg=column)


def test_hidden_files_are_skipped_and_an_msd_test_image_is_a_case(tmp_path, phantoms):
    root = write_set(tmp_path / "msd", "msd", phantoms)
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"AppleDouble")  # as macOS archives carry them
    assert sorted(list_cases(root)) == [1, 2]
    image, _ = phantoms[1]
    test_image = root / "imagesTs" / "BRATS_485.nii.gz"
    _save(image[[("t1", "t1ce", "t2", "flair").index(k) for k in MSD_ORDER]], test_image)
    case = case_from_path(test_image)
    assert case.layout == "msd" and case.volume_id == 485 and case.seg is None
    np.testing.assert_allclose(load_nifti_case(test_image)[0], image, atol=1e-5)


# --- TUMORLIB_DATA: a NIfTI folder of any layout is the workspace's data -----------------------------------

def test_data_layout_tells_kaggle_nifti_and_neither(tmp_path, phantoms):
    from tumorlib.io.layouts import data_layout

    for layout in LAYOUTS:
        assert data_layout(write_set(tmp_path / layout, layout, phantoms)) == layout
    (tmp_path / "kaggle").mkdir()
    (tmp_path / "kaggle" / "volume_1_slice_0.h5").write_bytes(b"")
    assert data_layout(tmp_path / "kaggle") == "kaggle"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as err:
        data_layout(tmp_path / "other")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "other") in message
    assert all(name in message for name in LAYOUTS)


@pytest.mark.parametrize("layout", ["brats2021", "msd"])
def test_tumorlib_data_nifti_folder_is_cached_as_cache_nifti_does(tmp_path, phantoms, monkeypatch, layout):
    from tumorlib.core.config import Config
    from tumorlib.data.cache import load_cache_index
    from tumorlib.data.cache.nifti import build_nifti_cache
    from tumorlib.data.resolve import resolve_cache

    root = write_set(tmp_path / layout, layout, phantoms)
    monkeypatch.setenv("TUMORLIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUMORLIB_DATA", str(root))
    monkeypatch.delenv("TUMORLIB_CACHE", raising=False)
    config = Config(cache_workers=1)
    cache = resolve_cache(config, progress=False)
    index = load_cache_index(cache)
    assert index["layout"] == layout and index["label_convention"] == LAYOUT_CONVENTIONS[layout]
    assert index["source"] == str(root.resolve())
    direct = load_cache_index(build_nifti_cache(root, tmp_path / "direct", workers=1, progress=False,
                                                cache_hw=config.cache_hw, margin=config.cache_margin))
    assert index["volumes"] == direct["volumes"]
    assert resolve_cache(config, progress=False) == cache  # the finished cache is reused


@pytest.mark.parametrize("how", ["--data", "TUMORLIB_DATA"])
def test_cache_command_reads_a_nifti_data_folder_as_cache_nifti_does(tmp_path, phantoms, monkeypatch, how):
    from tumorlib.app.cli import main
    from tumorlib.data.cache import load_cache_index

    root = write_set(tmp_path / "brats2023", "brats2023", phantoms)
    monkeypatch.setenv("TUMORLIB_HOME", str(tmp_path / "home"))
    assert main(["cache", "--nifti", str(root), "--out", str(tmp_path / "direct"), "--workers", "1", "--quiet"]) == 0
    if how == "--data":
        argv = ["cache", "--data", str(root)]
    else:
        monkeypatch.setenv("TUMORLIB_DATA", str(root))
        argv = ["cache"]
    assert main([*argv, "--out", str(tmp_path / "c"), "--workers", "1", "--quiet"]) == 0
    index, direct = load_cache_index(tmp_path / "c"), load_cache_index(tmp_path / "direct")
    assert index["layout"] == "brats2023" and index["volumes"] == direct["volumes"]


def test_tumorlib_data_of_no_known_layout_is_a_one_line_error(tmp_path, monkeypatch):
    from tumorlib.core.config import Config
    from tumorlib.data.resolve import resolve_cache

    (tmp_path / "data" / "case1").mkdir(parents=True)
    (tmp_path / "data" / "case1" / "sub-01_T1w.nii.gz").write_bytes(b"")
    monkeypatch.setenv("TUMORLIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUMORLIB_DATA", str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match="known layouts: brats2020, brats2021") as err:
        resolve_cache(Config(cache_workers=1), progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_ci_train_through_tumorlib_data_on_a_brats2023_folder(tmp_path, phantoms, monkeypatch):
    from tumorlib.app.cli import main
    from tumorlib.data.synthetic import make_phantom

    root = tmp_path / "data"
    for vid in range(1, 6):
        write_case(root, "brats2023", vid, *make_phantom(SHAPE, seed=11, volume_id=vid))
    monkeypatch.setenv("TUMORLIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUMORLIB_DATA", str(root))
    monkeypatch.delenv("TUMORLIB_CACHE", raising=False)
    run = tmp_path / "run"
    assert main(["train", "--preset", "ci", "--out", str(run), "--epochs", "1", "--device", "cpu", "--quiet"]) == 0
    assert (run / "config.json").is_file()
