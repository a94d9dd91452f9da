"""The resize cache: parallel, deterministic, bad images excluded and reported."""
import shutil

import numpy as np
import pytest

from cxr.data.cache import CacheError, build_cache, load_cache
from cxr.data.images import read_image, resize_image


@pytest.fixture
def images(tmp_path, sample_images):
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sample_images[:24]:
        shutil.copy(p, folder / p.name)
    return folder


def test_cache_rows_match_the_reader(images, tmp_path):
    paths = sorted(images.iterdir())
    report = build_cache(paths, 64, 2, tmp_path / "cache", progress=False)
    pixels, index = load_cache(tmp_path / "cache")
    assert report["cached"] == 24 and pixels.shape == (24, 64, 64) and pixels.dtype == np.uint8
    row = index.set_index("Image Index").loc[paths[5].name, "row"]
    assert np.array_equal(pixels[row], resize_image(read_image(paths[5]), 64))


def test_same_inputs_give_byte_identical_cache_for_any_worker_count(images, tmp_path):
    paths = sorted(images.iterdir())
    build_cache(paths, 48, 1, tmp_path / "a", progress=False)
    build_cache(paths, 48, 2, tmp_path / "b", progress=False)
    for name in ("images.npy", "index.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_images_are_excluded_with_reasons(images, tmp_path):
    (images / "zero.png").write_bytes(b"")
    (images / "text.png").write_text("hello")
    report = build_cache(sorted(images.iterdir()), 32, 2, tmp_path / "cache", max_bad_fraction=0.1, progress=False)
    assert report["excluded"] == 2
    assert report["excluded_images"] == {"text.png": "not a PNG, JPEG or DICOM file",
                                         "zero.png": "empty file (0 bytes)"}
    _, index = load_cache(tmp_path / "cache")
    assert len(index) == 24 and "zero.png" not in set(index["Image Index"])


def test_corrupt_pngs_are_excluded_with_one_line_and_no_decoder_noise(images, tmp_path, capfd):
    """The workers decode with OpenCV, whose libpng writes to stderr: silenced, Pillow words the reason."""
    data = sorted(images.iterdir())[0].read_bytes()
    (images / "truncated.png").write_bytes(data[: len(data) // 2])
    (images / "flipped.png").write_bytes(data[:60] + bytes([data[60] ^ 0xFF]) + data[61:])
    for workers in (1, 2):
        report = build_cache(sorted(images.iterdir()), 32, workers, tmp_path / f"cache{workers}",
                             max_bad_fraction=0.1, progress=False)
        assert set(report["excluded_images"]) == {"truncated.png", "flipped.png"}
        assert all(reason.startswith("corrupt PNG data") for reason in report["excluded_images"].values())
    assert capfd.readouterr().err == ""


def test_too_many_bad_images_fail_and_keep_previous_cache(images, tmp_path):
    good = sorted(images.iterdir())
    build_cache(good, 32, 1, tmp_path / "cache", progress=False)
    before = (tmp_path / "cache" / "images.npy").read_bytes()
    (images / "zero.png").write_bytes(b"")
    with pytest.raises(CacheError, match=r"1 of 25 images unreadable .* resize.max_bad_fraction 0.0"):
        build_cache(sorted(images.iterdir()), 48, 1, tmp_path / "cache", max_bad_fraction=0.0, progress=False)
    assert (tmp_path / "cache" / "images.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "images"]  # no temp leftovers


def test_missing_cache_says_which_stage_to_run(tmp_path):
    with pytest.raises(CacheError, match="run the resize stage"):
        load_cache(tmp_path)


def test_cache_is_read_by_row_in_any_index_shape_and_a_truncated_file_is_one_line(images, tmp_path):
    paths = sorted(images.iterdir())
    build_cache(paths, 32, 2, tmp_path / "cache", progress=False)
    pixels, _ = load_cache(tmp_path / "cache")
    whole = np.load(tmp_path / "cache" / "images.npy")
    assert not isinstance(pixels, np.ndarray) and len(pixels) == 24
    np.testing.assert_array_equal(pixels[3], whole[3])
    np.testing.assert_array_equal(pixels[np.array([5, 1, 5])], whole[[5, 1, 5]])
    np.testing.assert_array_equal(pixels[np.array([[0, 2], [4, -1]])], whole[[[0, 2], [4, -1]]])
    assert pixels[np.array([], dtype=np.int64)].shape == (0, 32, 32)
    with pytest.raises(IndexError):
        pixels[24]
    data = (tmp_path / "cache" / "images.npy").read_bytes()
    (tmp_path / "cache" / "images.npy").write_bytes(data[:-100])
    cut, _ = load_cache(tmp_path / "cache")
    with pytest.raises(CacheError, match=r"images.npy: truncated at row 23; rerun resize"):
        cut[np.arange(24)]
    (tmp_path / "cache" / "images.npy").write_bytes(b"not numpy")
    with pytest.raises(CacheError, match=r"images.npy: not a .npy array"):
        load_cache(tmp_path / "cache")
