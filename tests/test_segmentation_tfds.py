"""TFDS's own Cityscapes builder (``cityscapes/semantic_segmentation``) prepared offline from
tiny manual-download zips laid out as it expects, read through our TFDS path and compared
with our folder reader on the same files."""

import zipfile

import numpy as np
import pytest
from PIL import Image

from detcon_jax import data
from detcon_jax.data import segmentation_sets

# The builder declares 1024 x 2048 images (its decoder sets that static shape), so the files
# have Cityscapes' real size; flat colours and 128-pixel label blocks keep the PNGs small.
H, W = 1024, 2048
SPLITS = {"train": 1, "val": 2, "test": 1}  # the builder reads all three directories
CITY = "zurich"


def _label_ids(seed: int) -> np.ndarray:
    blocks = np.random.default_rng(seed).choice(
        np.asarray([0, 4, 7, 8, 11, 21, 26, 33], np.uint8), size=(H // 128, W // 128))
    return np.kron(blocks, np.ones((128, 128), np.uint8))


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    """(folder root, manual_dir with the two zips of TFDS's manual download)."""
    root = tmp_path_factory.mktemp("cityscapes")
    manual = tmp_path_factory.mktemp("manual")
    zips = {"leftImg8bit": zipfile.ZipFile(manual / "leftImg8bit_trainvaltest.zip", "w"),
            "gtFine": zipfile.ZipFile(manual / "gtFine_trainvaltest.zip", "w")}
    seed = 0
    for split, count in SPLITS.items():
        for k in range(count):
            seed += 1
            stem = f"{CITY}_{k:06d}_{seed:06d}"
            files = {
                f"leftImg8bit/{split}/{CITY}/{stem}_leftImg8bit.png":
                    Image.new("RGB", (W, H), (10 * seed, 255 - 20 * seed, 3 * seed)),
                f"gtFine/{split}/{CITY}/{stem}_gtFine_labelIds.png":
                    Image.fromarray(_label_ids(seed), mode="L"),
            }
            for name, image in files.items():
                path = root / name
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
                zips[name.split("/")[0]].write(path, name)
    for archive in zips.values():
        archive.close()
    return root, manual


@pytest.mark.slow  # TFDS imports its builders and prepares a data set: ~10-20 s here
def test_tfds_cityscapes_prepared_offline_matches_the_folder_reader(cityscapes, tmp_path):
    import tensorflow_datasets as tfds

    root, manual = cityscapes
    city = segmentation_sets.CITYSCAPES
    builder = tfds.builder(city.tfds_name, data_dir=tmp_path)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual), try_download_gcs=False))
    assert {s: builder.info.splits[city.tfds_split(s)].num_examples for s in SPLITS} == SPLITS

    def batches(**kwargs):
        ds = data.make_segmentation_dataset(
            batch_size=1, stats=data.PipelineStats(), crop="pad",
            eval_frame=(H, W), label_map=city.label_map, **kwargs)
        return [(b["image"][0], b["label"][0]) for b in ds.as_numpy_iterator()]

    ours = batches(data_dir=root, layout="cityscapes", split=city.test_split)
    theirs = batches(data_dir=tmp_path, layout="tfds", tfds_name=city.tfds_name,
                     split=city.tfds_split(city.test_split))
    assert len(theirs) == len(ours) == SPLITS["val"]
    # TFDS orders examples by a hash of their key: pair them by image (flat colours differ).
    for image, label in theirs:
        match = [i for i, (other, _) in enumerate(ours) if np.array_equal(other, image)]
        assert len(match) == 1
        np.testing.assert_array_equal(label, ours[match[0]][1])
        assert set(np.unique(label)) <= {0, 1, 2, 8, 13, 18, 255} and (label == 255).any()
