# The C walk of runs.py (_runs.c); same contract as runs.rewrite_run_py.
def rewrite_run(
    buf: memoryview, pos: int, end: int, dst_key: bytes, src_key: bytes, max_len: int, /
) -> tuple[int, int, int]: ...
