"""A helper process that holds an output's lock the way ``checkpoints.output_lock`` takes it."""

import subprocess
import sys


def hold_lock(path):
    """Start a process that takes the flock on ``<path>.lock`` (pid inside) and waits; the caller ends it."""
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.write(fd, str(os.getpid()).encode()); "
            "print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, f"{path}.lock"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder
