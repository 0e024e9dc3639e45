"""Settings for the whole test run."""

from attn_course.runtime import set_cpu_threads


def pytest_configure(config):
    # The course's thread policy (a thread per idle core): with torch's default of one thread per
    # core, the tests slow down many times over when anything else runs on the machine.
    set_cpu_threads()
