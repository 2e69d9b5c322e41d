def requests(
    data: bytes,
    batch: bool,
    lows: bytes,
    highs: bytes,
    min_timestamp: int,
    max_timestamp: int,
    key_length: int,
) -> tuple[list[str], list[str | None], list[int], bytes, bytes, list[int]] | None: ...
