"""What differs between the transformers versions the tests run on (the declared floor and the newest)."""

from __future__ import annotations

import transformers
from packaging.version import Version

# `from_pretrained`'s dtype argument: `dtype` since transformers 4.56, `torch_dtype` before.
DTYPE_ARG = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
