"""Semantic segmentation evaluation: a linear probe on frozen feature maps, or fine-tuning.

* ``probe``: a 1x1 convolution (per-position linear classifier) on the frozen encoder's
  feature map, its logits bilinearly upsampled to the label resolution, pixel-wise softmax
  cross-entropy averaged over the labelled pixels (the ignore label contributes nothing);
  SGD + Nesterov momentum 0.9, cosine learning rate. As in `linear`, features are z-scored
  with training statistics by default (``--no_standardize`` turns it off). It trains on the
  features of the evaluation-mode training images (whole image resized to S x S) and, with
  ``--augment_passes=A``, on A further passes of random-crop + flip views of image and label.
* ``finetune``: an FCN head (two 3x3 conv + BatchNorm + ReLU, then a 1x1 conv to the classes)
  on the encoder, upsampled bilinearly; encoder and head are trained together (BatchNorm in
  training mode with batch statistics) on random-crop + flip views. ``--protocol=voc|
  cityscapes`` sets the paper's dense-transfer protocol (`protocols`: VOC 2012 train_aug ->
  val, Cityscapes train -> val; scale-jitter crops, step schedule, dilated head, evaluation
  of whole images at the labels' native resolution).

Both report the mean intersection-over-union and per-class IoU from a confusion matrix
accumulated over the evaluation split at the labels' native resolution: the logits are
upsampled to the label frame (default ``--eval_crop=frame``: images padded to the largest
label of the split and resized to S x S; the protocols' ``pad``: images unscaled);
``--eval_crop=resize|center`` scores S x S labels resized with the image instead:
``IoU_c = TP_c / (TP_c + FP_c + FN_c)``. Pixels with the ignore label are excluded from every
count. A class that appears neither in the ground truth nor in the predictions
of the whole split (``TP + FP + FN = 0``) has an undefined IoU (reported as ``None``) and
is left out of the mean, rather than counted as 0 or 1.

Both run on a mesh of every device of every process (`detcon_jax.sharding`): the probe's
feature extraction (through the feature cache, `common.cached_extract`) and the fine-tune's
training and evaluation steps (global batches, BatchNorm over the global batch).

CLI (prints mIoU and the per-class IoU table; ``--predictions_png`` draws predictions
beside the ground truth)::

    python -m detcon_jax.evaluate.segmentation --mode=probe|finetune \
        --checkpoint=WORKDIR|FILE.npy|random:50|random:WORKDIR --data=CAMVID_DIR \
        [--num_classes=11 --void_ids=11 --image_size=224 --output=r.json]
    python -m detcon_jax.evaluate.segmentation --protocol=voc --checkpoint=... \
        --data=/data/VOCdevkit [--learning_rate=... --seed=...]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from detcon_jax import model, paths
from detcon_jax.evaluate import common, protocols
from detcon_jax.evaluate.dense import (
    CAMVID_CLASSES,
    IGNORE_LABEL,
    FCNHead,
    _numpy,
    confusion_matrix,
    finetune,
    iou_from_confusion,
    pixel_cross_entropy,
    predict_probe,
    segmentation_metrics,
    train_segmentation_probe,
    upsample_logits,
)
from detcon_jax.evaluate.features import progress
from detcon_jax.evaluate.reporting import format_iou_table, write_predictions_png

__all__ = [
    "CAMVID_CLASSES",
    "FCNHead",
    "confusion_matrix",
    "finetune",
    "format_iou_table",
    "iou_from_confusion",
    "main",
    "pixel_cross_entropy",
    "predict_probe",
    "segmentation_metrics",
    "train_segmentation_probe",
    "upsample_logits",
    "write_predictions_png",
]


# ---------------------------------------------------------------------------------------------
# CLI.


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from err


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}"
                                         ) from err


COST = """\
Cost of the defaults: --mode=probe extracts one whole-image feature-map pass over train and
test (N_train + N_test forwards at 224 px; CamVid: 367 + 233 = 600, plus 367 per
--augment_passes) and trains the 1x1 probe for 50 epochs on the cached maps. --mode=finetune
trains the whole network: --epochs x N_train / --batch_size steps (CamVid: 1,146 steps of 16
images, ~18,000 forward + backward passes), then N_test forwards. Measured on the loaded
2-core development machine: a ResNet-50 forward runs at 3.8 img/s at 224 px and 14.5 img/s at
96 px (the probe's defaults on CamVid: ~3 min of extraction; a fine-tune is ~3x a forward per
image: ~4 h). --train_max_images / --test_max_images and smaller images cut it."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detcon_jax.evaluate.segmentation", formatter_class=common.Formatter,
        description="Semantic segmentation mIoU of a backbone: linear probe or fine-tuning.",
        epilog=COST)
    common.add_backbone_args(parser)
    parser.add_argument("--mode", choices=("probe", "finetune"), default="probe")
    parser.add_argument("--protocol", choices=sorted(protocols.PROTOCOLS), default=None,
                        help="a dense-transfer protocol of the paper: sets the defaults of "
                             "the flags below (explicit flags win); see evaluate/protocols.py")
    parser.add_argument("--data", required=True,
                        help="data root (local or a URI) in --layout, or the TFDS data dir "
                             "with --layout=tfds")
    parser.add_argument("--layout", choices=("folder", "voc", "cityscapes", "tfds"),
                        default="folder",
                        help="folder: SPLIT/{images,labels} (CamVid); voc: VOCdevkit; "
                             "cityscapes: leftImg8bit + gtFine; tfds: --tfds_name")
    parser.add_argument("--tfds_name", default=None,
                        help="with --layout=tfds, e.g. cityscapes/semantic_segmentation")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--test_split", default=None,
                        help="None: 'test' when the folder has one, else 'val'")
    common.add_subset_args(parser, per_class=False)
    parser.add_argument("--num_classes", type=int, default=11, help="CamVid: 11")
    parser.add_argument("--void_ids", type=_ints, default=(11,),
                        help="label ids to ignore (CamVid: 11 'Unlabelled')")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=16,
                        help="global batch (a multiple of the devices)")
    parser.add_argument("--epochs", type=int, default=50, help="probe epochs")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tune steps (None: --epochs passes over train)")
    parser.add_argument("--learning_rate", type=float, default=None,
                        help="None: 0.1 (probe) / 0.01 (finetune)")
    parser.add_argument("--weight_decay", type=float, default=None,
                        help="None: 0 (probe) / 1e-4 (finetune)")
    parser.add_argument("--augment_passes", type=int, default=0,
                        help="probe: extra random-crop+flip feature passes over train")
    parser.add_argument("--head_channels", type=int, default=256, help="finetune head width")
    parser.add_argument("--head_dilation", type=int, default=1,
                        help="atrous rate of the head's 3x3 convs (protocols: 6)")
    parser.add_argument("--output_stride", type=int, choices=model.OUTPUT_STRIDES, default=32,
                        help="total stride of the ResNet: 16 dilates its last block group "
                             "(protocols: 16; 32 turns that off; see model.ResNet)")
    parser.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                        help="finetune learning-rate schedule (step: x0.1 at 70%% and 90%%)")
    parser.add_argument("--train_crop", choices=("random", "jitter"), default="random",
                        help="finetune views: pre-training random crop, or random scale in "
                             "--scale_range + S x S crop (jitter)")
    parser.add_argument("--scale_range", type=_floats, default=(0.5, 2.0))
    parser.add_argument("--eval_crop", choices=("frame", "resize", "center", "pad"),
                        default="frame",
                        help="frame: images padded to --eval_frame and resized to S x S, "
                             "labels at native resolution; pad: images unscaled; "
                             "resize / center: labels resized with the image (S x S)")
    parser.add_argument("--eval_frame", type=_ints, default=None,
                        help="H,W for --eval_crop=frame|pad (None: the largest label of "
                             "the test split; required with --layout=tfds)")
    parser.add_argument("--no_standardize", action="store_true")
    parser.add_argument("--predictions_png", default=None,
                        help="write image | ground truth | prediction of the first test "
                             "images to this PNG (local or gs://...)")
    parser.add_argument("--predictions_count", type=int, default=8,
                        help="images in --predictions_png")
    return parser


def _resolve_splits(args: argparse.Namespace) -> str:
    if args.layout != "folder":
        if args.test_split is None:
            raise common.UsageError(f"--layout={args.layout} needs --test_split")
        return args.test_split
    root = paths.check_reachable(args.data, what="--data")
    if not root.is_dir():
        raise common.UsageError(f"--data={args.data}: directory does not exist")
    test = args.test_split
    if test is None:
        test = "test" if (root / "test" / "images").is_dir() else "val"
    for split in (args.train_split, test):
        if not (root / split / "images").is_dir():
            raise common.UsageError(f"--data={args.data}: no {split}/images folder")
    return test


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the segmentation evaluation described by parsed CLI ``args``."""
    from detcon_jax import data

    test_split = _resolve_splits(args)
    common.check_subset_args(args)
    if args.num_classes < 1 or args.epochs < 1 or args.augment_passes < 0:
        raise common.UsageError("--num_classes and --epochs must be >= 1, --augment_passes >= 0")
    if args.protocol and args.mode != "finetune":
        raise common.UsageError(f"--protocol={args.protocol} is a --mode=finetune protocol")
    native = args.eval_crop in ("frame", "pad")
    if native and args.eval_frame is None and args.layout == "tfds":
        raise common.UsageError(f"--eval_crop={args.eval_crop} with --layout=tfds needs "
                                "--eval_frame=H,W")
    if args.eval_frame is not None and (len(args.eval_frame) != 2 or min(args.eval_frame) < 1):
        raise common.UsageError(f"--eval_frame must be H,W, got {args.eval_frame}")
    if len(args.scale_range) != 2 or not 0 < args.scale_range[0] <= args.scale_range[1]:
        raise common.UsageError(f"--scale_range must be LOW,HIGH with 0 < LOW <= HIGH, got "
                                f"{args.scale_range}")
    dataset_info = _dataset_info(args)
    if native and args.eval_frame is None:
        from detcon_jax.data import segmentation_sets

        _, test_labels = segmentation_sets.segmentation_files(args.layout, args.data,
                                                              test_split)
        args.eval_frame = segmentation_sets.label_frame(test_labels)
    if args.predictions_png:
        paths.check_reachable(args.predictions_png, what="--predictions_png", writable=True,
                              is_file=True)
    backbone, info = common.backbone_from_args(args)
    backbone = backbone.with_output_stride(args.output_stride)
    local_batch = common.check_batch_size(args.batch_size)
    max_images = {args.train_split: args.train_max_images, test_split: args.test_max_images}
    counts = {split: min(_num_examples(args, dataset_info, split), max_images[split] or 1 << 62)
              for split in (args.train_split, test_split)}
    num_train = counts[args.train_split]

    def dataset(split: str, train: bool, crop: str | None = None, seed: int | None = None,
                batch_size: int = local_batch):
        if crop is None:
            crop = args.train_crop if train else args.eval_crop
        return data.make_segmentation_dataset(
            args.data, batch_size=batch_size, stats=data.PipelineStats(),
            image_size=args.image_size, split=_tfds_split(args, dataset_info, split),
            layout=args.layout, tfds_name=args.tfds_name,
            label_map=dataset_info.label_map if dataset_info else None,
            scale_range=args.scale_range, eval_frame=args.eval_frame,
            train=train, crop=crop, ignore_label=IGNORE_LABEL, void_ids=args.void_ids,
            # The training stream repeats before it shuffles: a buffer larger than the split
            # would only decode the same images again before the first batch.
            shuffle_buffer=max(1, min(1000, num_train)),
            seed=args.seed if seed is None else seed, max_images=max_images[split],
            process_index=jax.process_index(), process_count=jax.process_count())

    cache = common.feature_cache_from_args(args, info) if args.mode == "probe" else None

    def maps_of(split: str, crop: str = "resize", seed: int | None = None,
                description: str = "") -> tuple[np.ndarray, np.ndarray]:
        settings = {"task": "segmentation", "data": (args.data if paths.is_remote(args.data)
                             else os.path.abspath(args.data)),
                    "layout": args.layout, "tfds_name": args.tfds_name,
                    "split": split, "max_images": max_images[split],
                    "image_size": args.image_size, "crop": crop, "seed": seed,
                    "eval_frame": list(args.eval_frame) if crop in ("frame", "pad") else None,
                    "void_ids": list(args.void_ids)}
        return common.cached_extract(
            backbone.on_mesh(pool=False), lambda: dataset(split, False, crop, seed),
            settings=settings, cache=cache, total=common.host_share(counts[split]),
            description=description or f"{split} feature maps", pool=False)

    names = (dataset_info.class_names if dataset_info else
             CAMVID_CLASSES if args.num_classes == len(CAMVID_CLASSES) else None)
    if names is not None and len(names) != args.num_classes:
        names = None
    results: dict[str, Any] = {"task": f"segmentation_{args.mode}", "mode": args.mode,
                                "data": args.data, "train_split": args.train_split,
                                "test_split": test_split, "image_size": args.image_size,
                                "num_classes": args.num_classes, "void_ids": list(args.void_ids),
                                "num_train": num_train, "num_test": counts[test_split],
                                "layout": args.layout, "protocol": args.protocol,
                                "eval_crop": args.eval_crop,
                                "output_stride": args.output_stride,
                                "eval_frame": list(args.eval_frame) if native else None}
    gallery = None
    if args.mode == "probe":
        lr = 0.1 if args.learning_rate is None else args.learning_rate
        # Trained on S x S labels (the probe upsamples to them); scored at --eval_crop.
        maps, labels = maps_of(args.train_split)
        if args.augment_passes:
            # Ordered random-crop + flip passes (image and label cropped together), each
            # with its own seed; pass 0 stays the whole-image view.
            aug = [maps_of(args.train_split, "random", args.seed * 100_003 + i + 1,
                           f"augmented pass {i + 1}/{args.augment_passes}")
                   for i in range(args.augment_passes)]
            maps = np.stack([maps] + [a[0] for a in aug])
            labels = np.stack([labels] + [a[1] for a in aug])
        probe = train_segmentation_probe(
            maps, labels, num_classes=args.num_classes, learning_rate=lr,
            num_epochs=args.epochs, batch_size=args.batch_size,
            weight_decay=args.weight_decay or 0.0, standardize=not args.no_standardize,
            seed=args.seed)
        progress(f'probe trained: final epoch loss {probe["train_loss"]:.4f}')
        test_maps, test_labels = maps_of(test_split, args.eval_crop)
        pred = predict_probe(probe["params"], test_maps, test_labels.shape[1:])
        confusion = confusion_matrix(pred, test_labels, num_classes=args.num_classes)
        results.update(learning_rate=lr, epochs=args.epochs, train_loss=probe["train_loss"],
                       augment_passes=args.augment_passes,
                       standardize=not args.no_standardize)
        if args.predictions_png:
            count = args.predictions_count
            first = next(iter(_numpy(dataset(test_split, False, args.eval_crop,
                                             batch_size=count))))
            keep = np.asarray(first["valid"], bool)
            gallery = (first["image"][keep], test_labels[:count], pred[:count])
    else:
        lr = 0.01 if args.learning_rate is None else args.learning_rate
        steps = args.steps or max(1, args.epochs * num_train // args.batch_size)
        wd = 1e-4 if args.weight_decay is None else args.weight_decay
        tuned = finetune(
            backbone, _numpy(dataset(args.train_split, True)),
            lambda: dataset(test_split, False), num_classes=args.num_classes,
            num_steps=steps, learning_rate=lr, weight_decay=wd,
            head_channels=args.head_channels, seed=args.seed, schedule=args.schedule,
            head_dilation=args.head_dilation,
            keep_predictions=args.predictions_count if args.predictions_png else 0)
        confusion = tuned["confusion"]
        gallery = tuned.get("gallery")
        results.update(learning_rate=lr, steps=steps, weight_decay=wd,
                       head_channels=args.head_channels, head_dilation=args.head_dilation,
                       schedule=args.schedule, train_crop=args.train_crop,
                       scale_range=list(args.scale_range), batch_size=args.batch_size,
                       losses=tuned["losses"])
    results.update(segmentation_metrics(confusion, names))
    results["confusion_matrix"] = confusion.tolist()
    results["backbone"] = common.describe(info)
    if gallery is not None and jax.process_index() == 0:
        write_predictions_png(args.predictions_png, *gallery, num_classes=args.num_classes)
        progress(f"predictions written to {args.predictions_png}")
        results["predictions_png"] = args.predictions_png
    return results


def _dataset_info(args: argparse.Namespace) -> Any:
    """The known `SegmentationSet` behind ``--layout`` / ``--tfds_name`` (None: a folder)."""
    from detcon_jax.data import segmentation_sets

    if args.layout == "tfds":
        known = [d for d in (segmentation_sets.CITYSCAPES, segmentation_sets.VOC)
                 if d.tfds_name and d.tfds_name == args.tfds_name]
        return known[0] if known else None
    return {"voc": segmentation_sets.VOC,
            "cityscapes": segmentation_sets.CITYSCAPES}.get(args.layout)


def _tfds_split(args: argparse.Namespace, dataset_info: Any, split: str) -> str:
    """TFDS's name of ``split`` (Cityscapes' ``val`` is ``validation`` there)."""
    if args.layout != "tfds" or dataset_info is None:
        return split
    return dataset_info.tfds_split(split)


def _num_examples(args: argparse.Namespace, dataset_info: Any, split: str) -> int:
    from detcon_jax import data
    from detcon_jax.data import segmentation_sets

    if args.layout == "tfds":
        return data.sources.TfdsSource(args.tfds_name, data_dir=args.data,
                                       split=_tfds_split(args, dataset_info, split)
                                       ).num_examples()
    return len(segmentation_sets.segmentation_files(args.layout, args.data, split)[0])


def _summary(results: Mapping[str, Any]) -> str:
    return (f'segmentation {results["mode"]} mIoU: {results["miou"]:.2f}% (pixel acc '
            f'{results["pixel_accuracy"]:.2f}%, split {results["test_split"]}, '
            f'{results["num_test"]} images)\n' + format_iou_table(results["per_class_iou"]))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad arguments or paths)."""
    parser = _parser()
    # A protocol sets defaults, so that the flags given explicitly still win.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--protocol", choices=sorted(protocols.PROTOCOLS), default=None)
    chosen, _ = pre.parse_known_args(argv)
    if chosen.protocol:
        parser.set_defaults(protocol=chosen.protocol,
                            **protocols.protocol_defaults(chosen.protocol))
    return common.run_cli(parser, run, argv, _summary)


if __name__ == "__main__":
    sys.exit(main())
