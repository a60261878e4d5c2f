"""Lazy registries of methods and tasks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import BenchError
from bench.registry import Registry


def test_register_twice_is_an_error():
    r = Registry("method")
    r.register("a", "bench.quant:QuantSpec")
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", "bench.quant:QuantSpec")


def test_unknown_name_lists_known_and_suggests():
    r = Registry("method")
    r.register("rtn", "methods.rtn:RTN")
    r.register("lsq", "x:y")
    with pytest.raises(BenchError, match=r"unknown method 'rtm' \(did you mean 'rtn'\?\); known: rtn, lsq"):
        r.get("rtm")


def test_a_target_that_is_not_a_method_is_a_one_line_error():
    from bench.method import Method

    r = Registry("method", base=Method)
    r.register("spec", "bench.quant:QuantSpec")
    r.register("gone", "bench.quant:NoSuchThing")
    with pytest.raises(BenchError, match=r"^method 'spec': bench.quant:QuantSpec is not a Method subclass$"):
        r.get("spec")
    with pytest.raises(BenchError, match=r"^method 'gone': bench.quant:NoSuchThing does not exist"):
        r.get("gone")


def test_the_loader_runs_once_before_the_first_lookup():
    calls = []
    r = Registry("method", load=lambda: calls.append(r.register("late", "bench.quant:QuantSpec")))
    r.register("early", "bench.quant:QuantSpec")
    assert calls == []
    assert r.names() == ["early", "late"] and "late" in r and calls == [None]


def test_listing_imports_no_method_module():
    code = (
        "import sys; from bench.method import METHODS; names = METHODS.names(); "
        "assert 'methods.rtn' not in sys.modules, 'listing imported methods.rtn'; "
        "cls = METHODS.get('rtn'); assert 'methods.rtn' in sys.modules; print(names)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'fp', 'rtn'" in out.stdout


def test_bench_core_does_not_import_specific_methods():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, bench.run, bench.quant, bench.models; "
         "print(sorted(m for m in sys.modules if m.startswith('methods.')))"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "[]"
