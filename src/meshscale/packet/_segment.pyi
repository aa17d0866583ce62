from typing_extensions import Buffer

def split_rows(
    arena: Buffer,
    p: int,
    off: int,
    nseg: int,
    stride: int,
    hl: int,
    iph: int,
    gso: int,
    rem: int,
    proto: int,
    ecn: int,
) -> None: ...
