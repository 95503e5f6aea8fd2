"""diffusion-gr2: a generative re-ranking service with AR and block-diffusion decoders, and its training recipe.

Every module lives under this one package (``dgr2.model``, ``dgr2.kernels``, ``dgr2.service`` ...), so no
import name of the project can collide with a dependency's top-level package (``kernels`` is one on PyPI).
"""

__version__ = "0.1.0"
