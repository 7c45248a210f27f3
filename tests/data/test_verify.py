"""``slopekp data verify``: complete fixtures pass, each missing or broken piece (a truncated image, a bad
annotation value) is reported, exit 1 if incomplete or not a dataset folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_video import make_davis, make_ytvos, write_jpeg, write_label_png

from slopekp import cli
from slopekp.data.verify import detect_kind, verify_dataset


def make_cub(root, n=3):
    cub = root / "CUB_200_2011"
    lines = []
    for i in range(1, n + 1):
        rel = f"001.Black_footed_Albatross/Black_Footed_Albatross_{i:04d}.jpg"
        write_jpeg(cub / "images" / rel)
        lines.append(f"{i} {rel}")
    (cub / "images.txt").write_text("\n".join(lines) + "\n")
    for name in ("bounding_boxes.txt", "train_test_split.txt", "parts/parts.txt", "parts/part_locs.txt"):
        (cub / name).parent.mkdir(parents=True, exist_ok=True)
        (cub / name).write_text("1 0\n")
    for split in ("train", "val", "test"):
        for path in (f"cachedir/cub/data/{split}_cub_cleaned.mat", f"cachedir/cub/sfm/anno_{split}.mat"):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(b"MATLAB 5.0 MAT-file, test fixture" + bytes(100))
    return cub


def test_complete_fixtures_pass_and_kind_is_detected(tmp_path):
    make_davis(tmp_path / "d")
    make_ytvos(tmp_path / "y")
    make_cub(tmp_path / "c")
    for sub, kind in (("d", "davis"), ("y", "youtubevos"), ("c", "cub")):
        assert detect_kind(tmp_path / sub) == kind
        rep = verify_dataset(tmp_path / sub)
        assert rep.kind == kind and rep.ok, rep.format()
        assert "complete: no problems found" in rep.format()
    rep = verify_dataset(tmp_path / "c", kind="cub")
    assert any("3 of 3 listed images present" in n for n in rep.notes)
    assert any("the full CUB-200-2011 has 11788" in n for n in rep.notes)
    assert any("valid: 1 videos (1 with birds), 4 frames" in n for n in verify_dataset(tmp_path / "y").notes)


def test_cub_missing_pieces(tmp_path):
    cub = make_cub(tmp_path)
    (cub / "images" / "001.Black_footed_Albatross" / "Black_Footed_Albatross_0002.jpg").unlink()
    (cub / "parts" / "part_locs.txt").unlink()
    (tmp_path / "cachedir" / "cub" / "sfm" / "anno_val.mat").unlink()
    (tmp_path / "cachedir" / "cub" / "data" / "test_cub_cleaned.mat").write_bytes(b"<html>404</html>")
    rep = verify_dataset(tmp_path, kind="cub")
    assert not rep.ok
    text = "\n".join(rep.problems)
    assert "missing image" in text and "Black_Footed_Albatross_0002.jpg" in text
    assert "part_locs.txt" in text and "anno_val.mat" in text
    assert "test_cub_cleaned.mat: not a MATLAB .mat file" in text
    assert len(rep.problems) == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    rep = verify_dataset(empty, kind="cub")
    assert any("slopekp data fetch cub" in p for p in rep.problems)
    assert any("slopekp data fetch ucmr-annotations" in p for p in rep.problems)


def test_davis_problems_are_all_listed(tmp_path):
    davis = make_davis(tmp_path)
    (davis / "Annotations" / "480p" / "solo" / "00002.png").unlink()
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(
        davis / "Annotations" / "480p" / "birds" / "00001.png"
    )
    write_label_png(davis / "Annotations" / "480p" / "birds" / "00003.png", np.zeros((5, 16), np.uint8))
    rep = verify_dataset(tmp_path)
    assert rep.kind == "davis" and not rep.ok
    text = "\n".join(rep.problems)
    assert "3 annotations for 4 frames" in text
    assert "birds/00001.png: annotation is mode 'RGB'" in text
    assert "birds/00003.png: annotation size 5x16 differs from its frame's 12x16" in text
    (davis / "ImageSets" / "2017" / "train.txt").unlink()
    assert any("train.txt" in p for p in verify_dataset(davis, kind="davis").problems)


def test_ytvos_problems(tmp_path):
    make_ytvos(tmp_path)
    (tmp_path / "valid" / "Annotations" / "a1b2" / "00020.png").unlink()
    (tmp_path / "train" / "Annotations" / "a1b2" / "00015.png").unlink()
    rep = verify_dataset(tmp_path, kind="youtubevos")
    text = "\n".join(rep.problems)
    assert "no annotation 00020.png for the first frame of object 2" in text
    assert "no annotation for 1 frame(s), e.g. 00015.png (train annotates every frame)" in text
    assert len(rep.problems) == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dataset folder not found"):
        verify_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="kind must be one of"):
        verify_dataset(tmp_path, kind="imagenet")
    with pytest.raises(ValueError, match=r"not a recognised dataset folder: .* \(expected one of: cmr"):
        verify_dataset(tmp_path)


def test_cli_exit_status(tmp_path, capsys):
    make_davis(tmp_path)
    assert cli.main(["data", "verify", "--root", str(tmp_path)]) == 0
    assert "complete" in capsys.readouterr().out
    (tmp_path / "DAVIS" / "JPEGImages" / "480p" / "solo" / "00001.jpg").unlink()
    assert cli.main(["data", "verify", "--root", str(tmp_path), "--kind", "davis"]) == 1
    assert "INCOMPLETE" in capsys.readouterr().out
    assert cli.main(["data", "verify", "--root", str(tmp_path / "nope")]) == 1  # not a dataset folder


def test_cmr_folder_synthbirds_and_its_problems(tmp_path, capsys):
    from slopekp.data.matfiles import read_cub_cleaned, read_sfm_anno, write_cub_cleaned, write_sfm_anno
    from slopekp.data.synth.writer import generate_synthbirds

    root = generate_synthbirds(tmp_path / "sb", n_train=4, n_test=2, size=32, progress=False)
    assert detect_kind(root) == "cmr"  # not youtubevos, although SynthBirds writes a meta.json
    report = verify_dataset(root)
    assert report.ok, report.format()
    assert any("train: 4 of 4 images" in n for n in report.notes)

    recs = read_cub_cleaned(root / "train_cub_cleaned.mat")
    (root / "images" / recs[0].rel_path).unlink()  # a missing image
    (root / "images" / recs[1].rel_path).write_bytes(b"not a jpeg")  # a corrupt one
    Image.new("RGB", (20, 32)).save(root / "images" / recs[2].rel_path, format="JPEG")  # wrong size for its mask
    anno = read_sfm_anno(root / "anno_test.mat")
    write_sfm_anno(root / "anno_test.mat", type(anno)(anno.rot[:1], anno.scale[:1], anno.trans[:1], anno.S))
    problems = "\n".join(verify_dataset(root, kind="cmr").problems)
    assert f"missing image {root / 'images' / recs[0].rel_path}" in problems
    assert f"{root / 'images' / recs[1].rel_path}: not a readable image" in problems
    assert "image is 20x32 but its mask is 32x32" in problems
    assert "anno_test.mat: 1 cameras for 2 images" in problems
    write_cub_cleaned(root / "train_cub_cleaned.mat", recs)
    import scipy.io

    scipy.io.savemat(root / "test_cub_cleaned.mat", {"images": np.zeros((1, 2))})  # no fields at all
    assert "test_cub_cleaned.mat" in "\n".join(verify_dataset(root, kind="cmr").problems)
    assert cli.main(["data", "verify", "--root", str(root)]) == 1
    assert "INCOMPLETE" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------------
# full decode and annotation values (issue #8, item 6), unrecognised folders (exit status 1)
# ------------------------------------------------------------------------------------------------------------


def truncate_image(path) -> None:
    """Cut ``path`` (JPEG or PNG) inside its pixel data: the header still opens, decoding fails."""
    data = path.read_bytes()
    marker = data.find(b"\xff\xda") if data[:2] == b"\xff\xd8" else data.find(b"IDAT")  # JPEG SOS / PNG IDAT
    assert marker > 0
    path.write_bytes(data[: marker + max(20, (len(data) - marker) // 2)])
    with Image.open(path) as im:  # the header still reads: only a full decode finds the damage
        assert im.size[0] > 0


@pytest.fixture(scope="module")
def synthbirds(tmp_path_factory):
    from slopekp.data.synth.writer import generate_synthbirds

    return generate_synthbirds(tmp_path_factory.mktemp("sb") / "sb", n_train=4, n_test=2, size=32, progress=False)


@pytest.fixture
def corrupted(synthbirds, tmp_path):
    """A copy of the SynthBirds folder with one problem of each kind; returns (root, train records)."""
    import shutil

    from slopekp.data.matfiles import read_cub_cleaned, read_sfm_anno, write_cub_cleaned, write_sfm_anno

    root = tmp_path / "sb"
    shutil.copytree(synthbirds, root)
    recs = read_cub_cleaned(root / "train_cub_cleaned.mat")
    truncate_image(root / "images" / recs[0].rel_path)
    recs[1].mask[:] = 0  # an empty mask
    recs[2].bbox[2] = np.nan  # a NaN bbox
    recs[3].parts[:, 5] = [40.0, 5.0, 1.0]  # a visible keypoint right of the 32x32 image
    write_cub_cleaned(root / "train_cub_cleaned.mat", recs)
    anno = read_sfm_anno(root / "anno_test.mat")
    anno.trans[1, 0] = np.inf
    write_sfm_anno(root / "anno_test.mat", anno)
    return root, recs


def test_cmr_full_check_decodes_images_and_checks_annotation_values(corrupted):
    root, recs = corrupted
    rep = verify_dataset(root)
    assert rep.kind == "cmr" and not rep.ok
    mat = root / "train_cub_cleaned.mat"
    text = "\n".join(rep.problems)
    assert f"{root / 'images' / recs[0].rel_path}: truncated or corrupt image" in text
    assert f"{mat}: record 1 ({recs[1].rel_path}): mask is empty" in text
    assert f"{mat}: record 2 ({recs[2].rel_path}): bbox [" in text and "is not finite" in text
    assert f"{mat}: record 3 ({recs[3].rel_path}): visible keypoint 5 at (40.0, 5.0)" in text
    assert "outside the 32x32 image" in text
    assert f"{root / 'anno_test.mat'}: camera 1 " in text and "not finite" in text
    assert len(rep.problems) == 5, rep.format()
    assert any("train: 3 of 4 images present, decoded and matching their masks" in n for n in rep.notes)


def test_cmr_quick_reads_headers_only(corrupted):
    root, recs = corrupted
    rep = verify_dataset(root, quick=True)
    text = "\n".join(rep.problems)
    assert "truncated" not in text  # --quick does not decode
    assert "mask is empty" in text and "is not finite" in text  # annotation values are still checked
    assert len(rep.problems) == 4
    assert any("train: 4 of 4 images present and matching their masks (headers only" in n for n in rep.notes)


def test_cmr_bbox_and_mask_value_problems(synthbirds, tmp_path):
    import shutil

    from slopekp.data.matfiles import read_cub_cleaned, write_cub_cleaned

    root = tmp_path / "sb"
    shutil.copytree(synthbirds, root)
    recs = read_cub_cleaned(root / "train_cub_cleaned.mat")
    recs[0].bbox[:] = [20, 5, 10, 30]  # x2 < x1
    recs[1].bbox[:] = [100, 100, 140, 140]  # entirely outside the 32x32 image
    recs[2].bbox[:] = [1, 1, np.inf, 30]
    write_cub_cleaned(root / "train_cub_cleaned.mat", recs)
    text = "\n".join(verify_dataset(root).problems)
    assert "record 0" in text and "is empty (x2 < x1 or y2 < y1" in text
    assert "record 1" in text and "lies outside the 32x32 image (0% of it inside)" in text
    assert "record 2" in text and "bbox [1, 1, inf, 30] is not finite" in text


def test_video_full_check_decodes_frames_and_annotations(tmp_path):
    davis = make_davis(tmp_path / "d")
    truncate_image(davis / "JPEGImages" / "480p" / "solo" / "00002.jpg")
    truncate_image(davis / "Annotations" / "480p" / "birds" / "00001.png")
    rep = verify_dataset(tmp_path / "d")
    text = "\n".join(rep.problems)
    assert "solo/00002.jpg: truncated or corrupt image" in text
    assert "birds/00001.png: truncated or corrupt image" in text
    assert verify_dataset(tmp_path / "d", quick=True).ok
    make_ytvos(tmp_path / "y")
    truncate_image(tmp_path / "y" / "valid" / "JPEGImages" / "a1b2" / "00015.jpg")
    rep = verify_dataset(tmp_path / "y")
    assert [p.split(": ", 1)[1][:26] for p in rep.problems] == ["truncated or corrupt image"]
    assert "valid/JPEGImages/a1b2/00015.jpg" in rep.problems[0]
    assert verify_dataset(tmp_path / "y", quick=True).ok


def test_cli_unrecognised_folder_exits_1_with_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for root, msg in (
        (empty, f"not a recognised dataset folder: {empty} (expected one of"),
        (tmp_path / "nope", f"dataset folder not found: {tmp_path / 'nope'}"),
    ):
        assert cli.main(["data", "verify", "--root", str(root)]) == 1
        out = capsys.readouterr()
        assert out.out == "" and len(out.err.strip().splitlines()) == 1
        assert out.err.startswith(f"slopekp: error: {msg}"), out.err


def test_cli_verify_help_states_exit_codes_and_quick(capsys):
    with pytest.raises(SystemExit):
        cli.main(["data", "verify", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "0 complete" in out and "1 problems found or not a dataset folder" in out
    assert "--quick" in out and "--no-progress" in out


def test_cli_verify_corrupted_cmr(corrupted, capsys):
    root, _ = corrupted
    assert cli.main(["data", "verify", "--root", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "INCOMPLETE: 5 problem(s)" in out and "truncated or corrupt image" in out
    assert cli.main(["data", "verify", "--root", str(root), "--quick"]) == 1
    assert "INCOMPLETE: 4 problem(s)" in capsys.readouterr().out
