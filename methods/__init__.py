"""Quantization methods. Adding one: a file here plus one line below.

The registry (`bench.method.METHODS`) imports this package by name on first use, then the
modules named in $BENCH_PLUGINS, where methods kept outside this package register themselves.
"""

from bench.method import METHODS

METHODS.register("fp", "methods.fp:FullPrecision")
METHODS.register("rtn", "methods.rtn:RTN")
METHODS.register("lsq", "methods.lsq:LSQ")
METHODS.register("pact", "methods.pact:PACT")
METHODS.register("qsam2", "methods.qsam2:QSAM2")
METHODS.register("ptq4sam", "methods.ptq4sam:PTQ4SAM")
METHODS.register("saqsam", "methods.saqsam:SAQSAM")
