"""Where the tests find MNIST, and the mark that skips a test when it is not there."""

import os
from pathlib import Path

import pytest

DATA = os.environ.get("ATTN_COURSE_DATA")
needs_mnist = pytest.mark.skipif(not DATA or not (Path(DATA) / "mnist" / "t10k-images-idx3-ubyte.gz").exists(),
                                 reason="MNIST files not found: set ATTN_COURSE_DATA to a folder holding mnist/*.gz")
