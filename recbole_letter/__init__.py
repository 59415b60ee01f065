"""recbole_letter: generative recommendation with learnable item tokenization, as RecBole models.

Importing the package applies the RecBole compatibility shims (:mod:`recbole_letter.compat`)
before anything imports RecBole, so ``import recbole_letter`` first is all a user needs.
"""
from recbole_letter import compat as _compat

_compat.apply()

__version__ = "0.1.0"

__all__ = ["__version__"]
