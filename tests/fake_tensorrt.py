"""A minimal stand-in for the ``tensorrt`` module: only the calls ``s2sd_deploy.trt`` makes.

It is NOT TensorRT: it records what the builder was asked to do (profile shapes, flags, memory
limits, timing cache) so the builder's own logic can be tested on machines without a GPU.
``make_fake_tensorrt(major=10)`` has ``BuilderFlag.FP16``; ``major=11`` does not (strongly typed).
"""

from __future__ import annotations

import enum
import types


def make_fake_tensorrt(
    major: int = 10, parse_ok: bool = True, build_ok: bool = True, input_shape=(-1, 3, 32, 32)
) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = f"{major}.0.0-fake"
    trt.calls = {}

    class LogSeverity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        Severity = LogSeverity

        def __init__(self):
            pass

    class Logger(ILogger):
        WARNING = LogSeverity.WARNING

        def __init__(self, severity=LogSeverity.WARNING):
            super().__init__()

    flags = {"TF32": 1} if major >= 11 else {"FP16": 0, "TF32": 1}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.ILogger, trt.Logger = ILogger, Logger

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            trt.calls["network_flags"] = flags
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, index):
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.logger = network, logger
            self.num_errors = 0

        def parse(self, data: bytes):
            trt.calls["parsed_bytes"] = len(data)
            if not parse_ok:
                self.num_errors = 1
                return False
            self.network.inputs.append(Tensor("images", input_shape))
            return True

        def get_error(self, index):
            return "In node 3 (Conv): unsupported attribute"

    class Profile:
        def set_shape(self, name, minimum, optimum, maximum):
            trt.calls.setdefault("profile", {})[name] = (minimum, optimum, maximum)

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"cache:" + bytes(self.data)

    class Config:
        def set_memory_pool_limit(self, pool, size):
            trt.calls["workspace"] = (pool, size)

        def set_flag(self, flag):
            trt.calls.setdefault("flags", []).append(flag.name)

        def add_optimization_profile(self, profile):
            trt.calls["profiles_added"] = trt.calls.get("profiles_added", 0) + 1

        def create_timing_cache(self, data):
            trt.calls["timing_cache_in"] = bytes(data)
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            trt.calls["timing_cache_set"] = True

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if not build_ok:
                self.logger.log(LogSeverity.ERROR, "Error Code 4: Internal Error (no kernel for node Conv_3)")
                return None
            return b"fake-plan"

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt
