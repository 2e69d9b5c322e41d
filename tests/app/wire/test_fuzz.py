"""Fuzzing: the API from its OpenAPI schema (schemathesis) against a real server, and the C reader of
prediction bodies under a coverage-guided fuzzer (atheris).

The API: no 5xx, every answer as declared. Each operation gets requests generated from its declared
schema, valid ones and ones that break it, and every response is checked: never a server error, a status
code the operation declares, the declared content type and headers, a body that matches the declared
schema. Examples are bounded (``MAX_EXAMPLES`` per operation, no shrinking) and derandomized, so that
this part takes well under a minute and a failure reruns the same way.

The C reader: see ``test_the_c_reader_survives_coverage_guided_fuzzing``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.app.payloads import contexts, make_settings, predict_body
from tools.bench import concrete, make_requests
from tools.process import ROOT, serving

pytestmark = [pytest.mark.server, pytest.mark.slow]

MAX_EXAMPLES = 20
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,  # a body that breaks the schema must be refused (4xx)
)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    env = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm,hybrid",
        "CPE_MODEL": "lstm",
        "CPE_MAX_WINDOW": "16",
        "CPE_MAX_BATCH": "4",
        "CPE_MAX_ROUTES": "4",
        "CPE_LOG_LEVEL": "warning",
    }
    with serving(env) as [served]:
        yield served.url
        served.stop()
        tail = served.output()[-3000:]
        assert "Traceback" not in tail, tail  # no handler failed, even where the answer was fine


@pytest.fixture(scope="module")
def api_schema(server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server}/openapi.json")


# the operations, from the app's own schema (no server needed to list them); schemathesis's pytest
# plugin (schema.parametrize) does not run under pytest 9, so the cases are drawn here with hypothesis
# (a schema-breaking case exists only for an operation that takes something: these take a body)
OPERATIONS = [
    pytest.param(path, method, mode, id=f"{method} {path} {mode.value}")
    for path, methods in create_app(make_settings()).openapi()["paths"].items()
    for method, spec in methods.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or "requestBody" in spec or spec.get("parameters")
]


@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS)
def test_every_operation_answers_as_declared(
    api_schema: schemathesis.BaseSchema, path: str, method: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=30)

    fuzz()


# -- the C reader under atheris ------------------------------------------------------------------------

FUZZ_SECONDS = 20  # per CI run; the corpus starts from the seeds each time, so every run explores anew


def _clang_runtime(name: str) -> Path:
    found = subprocess.run(["clang", f"-print-file-name={name}"], capture_output=True, text=True, check=True)
    path = Path(found.stdout.strip())
    if not path.is_absolute() or not path.exists():
        pytest.fail(f"clang has no {name}: install its compiler-rt (Debian: libclang-rt-14-dev)")
    return path


def _build_fuzzing_reader(tmp: Path) -> tuple[Path, Path]:
    """The reader built with coverage for libFuzzer and AddressSanitizer, and the runtime to preload with
    it: AddressSanitizer and libFuzzer in one library, so that the reader's coverage reaches libFuzzer
    (AddressSanitizer alone would take its coverage callbacks as no-ops). Atheris builds such a library
    when it is installed from source; its wheels do not carry one."""
    asan, fuzzer = (
        _clang_runtime("libclang_rt.asan-x86_64.a"),
        _clang_runtime("libclang_rt.fuzzer_no_main-x86_64.a"),
    )
    objects = tmp / "asan"
    objects.mkdir()
    subprocess.run(["ar", "x", str(asan)], cwd=objects, check=True)
    (objects / "asan_preinit.cpp.o").unlink()  # .preinit_array is for executables, not shared libraries
    runtime = tmp / "asan_with_fuzzer.so"
    subprocess.run(
        ["clang++", "-shared", "-o", str(runtime), *sorted(map(str, objects.glob("*.o"))),
         "-Wl,--whole-archive", str(fuzzer), "-Wl,--no-whole-archive", "-lpthread", "-ldl", "-lrt", "-lm"],
        check=True,
    )  # fmt: skip
    reader = tmp / "reader.so"
    subprocess.run(
        ["clang", "-shared", "-fPIC", "-O1", "-g", "-fsanitize=address,fuzzer-no-link",
         f"-I{sysconfig.get_paths()['include']}", str(ROOT / "app/wire/_json_reader.c"), "-o", str(reader)],
        check=True,
    )  # fmt: skip
    return reader, runtime


def test_the_c_reader_survives_coverage_guided_fuzzing(tmp_path: Path) -> None:
    """tests/app/wire/fuzz_json_reader.py under libFuzzer for FUZZ_SECONDS: no crash, no out-of-bounds access,
    and the decoder answers with the C reader exactly what it answers with msgspec alone."""
    if shutil.which("clang") is None:  # .ci/run installs it
        pytest.skip("clang is not installed (Debian: clang libclang-rt-14-dev): the C reader is not fuzzed")
    reader, runtime = _build_fuzzing_reader(tmp_path)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    labelled = predict_body(3, contexts=contexts(3, patterns=["busy"]))
    seeds = {
        "one": b"\0" + orjson.dumps(predict_body(3)),
        "batch": b"\1" + concrete(orjson.dumps({"requests": make_requests(3, 4, seed=0)})),
        "labelled": b"\0" + orjson.dumps(labelled),
        "written": b"\3" + bytes(range(64)),  # a batch body written from these choices
    }
    for name, seed in seeds.items():
        (corpus / name).write_bytes(seed)
    harness, tokens = "tests.app.wire.fuzz_json_reader", ROOT / "tests/app/wire/fuzz_json_reader.dict"
    run = subprocess.run(
        [sys.executable, "-m", harness, str(reader), f"-max_total_time={FUZZ_SECONDS}",
         "-rss_limit_mb=4096", "-print_final_stats=1", f"-dict={tokens}",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(runtime), "ASAN_OPTIONS": "detect_leaks=0"},
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 120,
    )  # fmt: skip
    log = run.stderr[-6000:]
    assert run.returncode == 0, log
    assert "Using preloaded libfuzzer" in run.stderr, log  # the runtime built above, not atheris's own
    counters = int(run.stderr.split(" inline 8-bit counters")[0].rsplit("(", 1)[1])
    assert counters > 300, log  # the reader's branches guide the fuzzer
    runs = int(
        next(
            line for line in run.stderr.splitlines() if line.startswith("stat::number_of_executed_units")
        ).split()[-1]
    )
    assert runs > 1000, log
