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

for _module in filter(None, os.environ.get("BENCH_PLUGINS", "").split(",")):
    importlib.import_module(_module.strip())
