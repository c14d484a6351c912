"""Evaluation of pretrained backbones: linear probe, k-NN, segmentation."""
