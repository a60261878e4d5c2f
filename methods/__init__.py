"""Quantization methods. Adding one: a file here plus one line below."""

from bench.registry import Registry

METHODS = Registry("method")
METHODS.register("fp", "methods.fp:FullPrecision")
METHODS.register("rtn", "methods.rtn:RTN")
