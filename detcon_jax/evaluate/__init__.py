"""Evaluation of pretrained backbones: linear probe, k-NN, segmentation.

Modules (each a library and a CLI, ``python -m detcon_jax.evaluate.<name> --help``):

* ``features``: `load_backbone` (training workdir / orbax checkpoint, released Haiku
  ``.npy``, ``random:DEPTH`` or ``random:WORKDIR``), `MeshForward` and `extract`
  (eval-mode features on the mesh, pooled or maps, streamed to a sink with a progress bar).
* ``linear``: linear probe on frozen pooled features (BYOL protocol, LR sweep on held-out
  training images); top-1.
* ``knn``: weighted k-NN on L2-normalised features (k=20, T=0.07); top-1.
* ``segmentation``: 1x1-conv probe on frozen feature maps or FCN fine-tuning; mIoU and
  per-class IoU.
* ``common``: argument parsing, data-source resolution, subsets, one-line errors, JSON
  output, the cached (on-disk) extraction.
* ``cache``: the on-disk feature cache (per-host shards, keyed by a hash of backbone, data
  and preprocessing).
* ``reporting``: the per-class IoU table and the predictions PNG.
"""
