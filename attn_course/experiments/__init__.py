"""The course's experiments, one module per chapter, named after the paper module it trains.

Each module holds what a chapter adds around its paper: the data it trains on, the
metrics of the paper's experiments, the training :class:`~attn_course.spec.Recipe` per
task, the :class:`~attn_course.spec.Target` of each shipped checkpoint, the analysis
behind the chapter's figures, and ``SPECS``: the :class:`~attn_course.spec.ModelSpec` of
each model it trains. :mod:`attn_course.registry` collects the specs from :data:`CHAPTERS`.
"""

from . import draw, r2am, ram, scale, show_attend_tell, transformer, vit

CHAPTERS = (ram, draw, show_attend_tell, r2am, transformer, vit, scale)  # in the book's order
