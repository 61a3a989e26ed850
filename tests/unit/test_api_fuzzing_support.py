"""schemathesis (the ``test`` extra), the panel API's fuzzer, works under this
suite's rules: its pytest plugin and a fuzzing run raise no warning while
warnings are errors, pytest-timeout is armed, and it really finds a bug — here
in a tiny FastAPI app, driven in-process through its OpenAPI schema, the way
the panel's API is to be fuzzed. (Fixed seeds: the outcome must not depend
on luck.)"""

from __future__ import annotations

import pytest

INNER = """
import schemathesis
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from hypothesis import settings

app = FastAPI()


@app.get("/echo")
def echo(text: str) -> dict[str, str]:
    return {"text": text}


@app.get("/half/{n}")
def half(n: int) -> JSONResponse:
    if n % 2:  # the bug to find, in half of all inputs
        return JSONResponse({"detail": "odd"}, status_code=500)
    return JSONResponse({"half": n // 2})


schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.include(path="/echo").parametrize()
@settings(max_examples=20, database=None, derandomize=True)
def test_echo(case: schemathesis.Case) -> None:
    case.call_and_validate()


@schema.include(path="/half/{n}").parametrize()
@settings(max_examples=50, database=None, derandomize=True)
def test_half(case: schemathesis.Case) -> None:
    case.call_and_validate()
"""


def test_schemathesis_fuzzes_an_asgi_app_with_warnings_as_errors(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error", "--timeout=300")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_half*", "*Server error*", "*GET*/half/*"])
