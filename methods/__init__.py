"""Quantization methods. Adding one: a file here plus one line below.

Methods kept outside this package register themselves in a module named in
$BENCH_PLUGINS (comma-separated), imported after the built-in ones; sweep workers inherit it.
"""

import importlib
import os

from bench.registry import Registry

METHODS = Registry("method")
METHODS.register("fp", "methods.fp:FullPrecision")
METHODS.register("rtn", "methods.rtn:RTN")
METHODS.register("lsq", "methods.lsq:LSQ")
METHODS.register("pact", "methods.pact:PACT")
METHODS.register("qsam2", "methods.qsam2:QSAM2")
METHODS.register("ptq4sam", "methods.ptq4sam:PTQ4SAM")
METHODS.register("saqsam", "methods.saqsam:SAQSAM")

for _module in filter(None, os.environ.get("BENCH_PLUGINS", "").split(",")):
    importlib.import_module(_module.strip())
