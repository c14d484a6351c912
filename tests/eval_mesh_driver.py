"""k-NN, the segmentation probe and (optionally) a fine-tune, in one process; JSON to OUT.

``python tests/eval_mesh_driver.py CIFAR CAMVID OUT [--finetune] [--distributed]``: the
mesh tests run it with 1 or 8 fake devices, or as one of two processes, and compare.
"""

import sys

from detcon_jax.evaluate import knn, segmentation


def main(cifar: str, camvid: str, out: str, flags: list[str]) -> int:
    common = ["--checkpoint=random:tiny", "--image_size=32", "--batch_size=8",
              f"--feature_cache={out}/cache"] + [f for f in flags if f == "--distributed"]
    codes = [knn.main(common + [f"--data={cifar}", f"--output={out}/knn.json"]),
             segmentation.main(common + [f"--data={camvid}", "--epochs=2",
                                         f"--output={out}/probe.json"])]
    if "--finetune" in flags:
        codes.append(segmentation.main(common + [
            f"--data={camvid}", "--mode=finetune", "--steps=3", "--head_channels=8",
            f"--output={out}/finetune.json"]))
    return max(codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
