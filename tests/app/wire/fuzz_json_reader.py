"""Coverage-guided fuzzing (atheris, libFuzzer) of the C reader of prediction bodies, built with clang's
coverage and AddressSanitizer: tests/app/wire/test_fuzz.py builds it and runs this for a bounded time.

    python -m tests.app.wire.fuzz_json_reader READER.so [libFuzzer options] [CORPUS_DIR]

The property, on every input: the decoder with the C reader answers exactly what it answers with msgspec
alone (the same windows, bit for bit, or None from both). The first byte of an input picks a single or a
batch body, and whether the rest is the body itself (mutated bytes: the syntax) or the choices that write
one (numbers, keys and shapes near the rules' edges: the values). A crash, an AddressSanitizer report (a
read or write out of bounds) or a broken property stops the run with a non-zero exit and the input.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterator, Mapping

import atheris

_NAME = "app.wire._json_reader"
_EDGES = [
    "-0", "0", "-1", "0.5", "1", "1.0", "1.0000000000000002", "1e15", "1000000000000001", "1e16", "1e-400",
    "1e400", "-5e-324", "100000000000", "99999999999", "253402300799999", "253402300800000", "1.5", "true",
    "null", '"1"', "NaN", "[]", "{}",
]  # fmt: skip
_KEYS = [
    '"' + "ab" * 32 + '"',
    '"' + "AB" * 32 + '"',
    '"' + "ab" * 31 + '"',
    "[" + ", ".join(["7"] * 32) + "]",
]
_CONTEXT_EXTRAS = [
    "",
    ', "metadata": {}',
    ', "metadata": {"rtt": 1}',
    ', "pattern_id": null',
    ', "pattern_id": "p"',
]
_REQUEST_EXTRAS = [
    "",
    ', "model": null',
    ', "model": "lstm"',
    ', "model": "l stm"',
    ', "horizon": 2',
    ', "horizon": 0',
]


def _written(fdp: atheris.FuzzedDataProvider, batch: bool) -> bytes:
    """A body written from the fuzzer's choices: the common shape, with values near and past the edges."""

    def number() -> str:
        kind = fdp.ConsumeIntInRange(0, 3)
        if kind == 0:
            return repr(fdp.ConsumeRegularFloat())
        if kind == 1:
            return str(fdp.ConsumeIntInRange(-(2**10), 2**50))
        return str(fdp.PickValueInList(_EDGES))

    def request() -> str:
        contexts = []
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            features = ", ".join(number() for _ in range(fdp.ConsumeIntInRange(7, 9)))
            extra = fdp.PickValueInList(_CONTEXT_EXTRAS)
            contexts.append(f'{{"timestamp": {number()}, "features": [{features}]{extra}}}')
        return (
            f'{{"flow_key": {fdp.PickValueInList(_KEYS)}, "contexts": [{", ".join(contexts)}]'
            f"{fdp.PickValueInList(_REQUEST_EXTRAS)}}}"
        )

    if not batch:
        return request().encode()
    return f'{{"requests": [{", ".join(request() for _ in range(fdp.ConsumeIntInRange(1, 3)))}]}}'.encode()


def _load_reader(path: str) -> None:
    """The instrumented reader, in place of the built one, before the decoder imports it."""
    loader = importlib.machinery.ExtensionFileLoader(_NAME, path)
    spec = importlib.util.spec_from_file_location(_NAME, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[_NAME] = module


class _AnyModel(Mapping[str, int]):
    """Every model name served, with any horizon: the deployment's limits are not what is fuzzed."""

    def __getitem__(self, name: str) -> int:
        return 1 << 30

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def main() -> None:
    _load_reader(sys.argv.pop(1))
    with atheris.instrument_imports(include=["app.wire.decode"]):
        from app.wire import decode
    from app.schemas import Limits

    assert decode._json_reader is sys.modules[_NAME], "the decoder reads with the instrumented reader"
    reader = decode._json_reader
    limits = Limits(max_window=1 << 30, max_batch=1 << 30, horizons=_AnyModel(), default_model="lstm")

    def one_input(data: bytes) -> None:
        if not data:
            return
        batch, body = bool(data[0] & 1), data[1:]
        if data[0] & 2:
            body = _written(atheris.FuzzedDataProvider(body), batch)
        with_c = decode.fast_windows(body, limits, batch=batch)
        decode._json_reader = None
        try:
            alone = decode.fast_windows(body, limits, batch=batch)
        finally:
            decode._json_reader = reader
        if (with_c is None) != (alone is None):
            raise AssertionError(f"with the C reader {with_c is not None}, msgspec alone {alone is not None}")
        for a, b in zip(with_c or [], alone or [], strict=True):
            assert (a.flow_key, a.model, a.horizon, a.pattern_ids) == (
                b.flow_key,
                b.model,
                b.horizon,
                b.pattern_ids,
            )
            assert a.timestamps.tobytes() == b.timestamps.tobytes()
            assert a.features.tobytes() == b.features.tobytes()

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
