"""attn_course: the support package of the attention course book.

One module per paper (added chapter by chapter), plus shared pieces:
:mod:`attn_course.runtime` (profiles, device, seeding), :mod:`attn_course.data`
(MNIST and generated data sets), :mod:`attn_course.train` (the training loop),
:mod:`attn_course.checkpoints` (pretrained weights and model cards),
:mod:`attn_course.viz` and :mod:`attn_course.widgets` (figures and sliders).
"""

__version__ = "0.2.0"  # the release the notebooks install: bump it with `python tools/release.py bump X.Y.Z`
