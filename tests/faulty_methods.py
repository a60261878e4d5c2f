"""Methods that fail on purpose, for the sweep fault tests (loaded through $BENCH_PLUGINS).

`boom` raises inside apply, `sigkill` kills its own worker process, `sleepy` sleeps past any
test timeout. Each leaves the model untouched otherwise."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from bench.method import METHODS
from methods.rtn import RTN, RTNConfig


@dataclass(frozen=True)
class FaultConfig(RTNConfig):
    pass


class Boom(RTN):
    Config = FaultConfig

    def apply(self, model, calib):
        raise RuntimeError("boom: this method fails on purpose")


class SigKill(RTN):
    Config = FaultConfig

    def apply(self, model, calib):
        os.kill(os.getpid(), signal.SIGKILL)


class Sleepy(RTN):
    Config = FaultConfig

    def apply(self, model, calib):
        time.sleep(3600)


METHODS.register("boom", "tests.faulty_methods:Boom")
METHODS.register("sigkill", "tests.faulty_methods:SigKill")
METHODS.register("sleepy", "tests.faulty_methods:Sleepy")
