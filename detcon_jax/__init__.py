"""detcon_jax: DetCon (Hénaff et al., ICCV 2021) in JAX/Flax.

Sub-modules each have one job; see the README and docs for the layout.
"""

__version__ = "0.1.0"
