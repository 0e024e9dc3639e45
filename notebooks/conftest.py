"""nbval settings for the chapter notebooks (``pytest --nbval-lax notebooks``).

nbval waits only 5 seconds for each output message after a cell has finished. On a
loaded machine (a training job beside the test run, a shared CI runner) a long training
cell's last progress-bar messages can arrive later than that, and the cell fails with
"Timeout of 5 seconds exceeded waiting for output" although its code succeeded. Allow a
minute instead; a cell that really hangs is still stopped by ``--nbval-cell-timeout``.
"""

OUTPUT_TIMEOUT_S = 60


def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):  # an nbval cell
            item.output_timeout = OUTPUT_TIMEOUT_S
