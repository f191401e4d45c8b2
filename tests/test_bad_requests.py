"""Bad requests get a clear status and a message, and the server keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from conftest import LINEAR_SHAPE

from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_client.api.v1 import smoothserve_pb2 as pb
from smoothserve_client.api.v1 import smoothserve_pb2_grpc as pb_grpc
from smoothserve_dev.testing import ServerProcess

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def raw_predict(server, **fields) -> grpc.RpcError:
    x = np.full(LINEAR_SHAPE, 0.5, dtype=np.float32)
    request = pb.PredictRequest(
        model_name="linear",
        input=pb.Tensor(shape=list(LINEAR_SHAPE), dtype=pb.DTYPE_FLOAT32, data=x.tobytes()),
        options=pb.PredictOptions(n=100),
    )
    for path, value in fields.items():
        target, *rest = path.split("__")
        if rest:
            message = getattr(request, target)
            if isinstance(value, list):
                del getattr(message, rest[0])[:]
                getattr(message, rest[0]).extend(value)
            else:
                setattr(message, rest[0], value)
        else:
            setattr(request, target, value)
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as error:
        pb_grpc.SmoothServeStub(channel).Predict(request, timeout=30)
    return error.value


CASES = {
    "wrong shape": ({"input__shape": [1, 8, 7]}, INVALID, "shape"),
    "wrong rank": ({"input__shape": [8, 8]}, INVALID, "shape"),
    "no dtype": ({"input__dtype": pb.DTYPE_UNSPECIFIED}, INVALID, "dtype"),
    "uint8 bytes for float32 shape": ({"input__dtype": pb.DTYPE_UINT8}, INVALID, "bytes"),
    "short data": ({"input__data": b"\0" * 12}, INVALID, "bytes"),
    "NaN": ({"input__data": np.full(LINEAR_SHAPE, np.nan, np.float32).tobytes()}, INVALID, "NaN"),
    "Inf": ({"input__data": np.full(LINEAR_SHAPE, np.inf, np.float32).tobytes()}, INVALID, "Inf"),
    "out of range": ({"input__data": np.full(LINEAR_SHAPE, 2.0, np.float32).tobytes()}, INVALID, "[0.0, 1.0]"),
    "unknown model": ({"model_name": "resnet"}, grpc.StatusCode.NOT_FOUND, "resnet"),
    "unknown version": ({"model_version": "7"}, grpc.StatusCode.NOT_FOUND, "version"),
    "n = 0": ({"options__n": 0}, INVALID, "n must"),
    "n < 0": ({"options__n": -5}, INVALID, "n must"),
    "n0 = 0": ({"options__n0": 0}, INVALID, "n0 must"),
    "n over the maximum": ({"options__n": 10**9}, INVALID, "n must"),
    "n0 over the maximum": ({"options__n0": 10**9}, INVALID, "n0 must"),
    "alpha = 0": ({"options__alpha": 0.0}, INVALID, "alpha"),
    "alpha = 1/2": ({"options__alpha": 0.5}, INVALID, "alpha"),
    "alpha < 0": ({"options__alpha": -0.1}, INVALID, "alpha"),
    "alpha NaN": ({"options__alpha": float("nan")}, INVALID, "alpha"),
    "unknown mode": ({"options__mode": 7}, INVALID, "mode"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_request_gets_a_clear_status(server, client, case) -> None:
    fields, code, words = CASES[case]
    error = raw_predict(server, **fields)
    assert error.code() == code, error.details()
    assert words in error.details()
    # ...and the server still serves.
    assert sum(client.predict("linear", np.zeros(LINEAR_SHAPE, np.float32), n=10).counts) == 10


def test_message_over_the_size_limit_is_resource_exhausted(linear_repo) -> None:
    with (
        ServerProcess(linear_repo, args=["--max-message-bytes", "4096"]) as server,
        SmoothServeClient(server.address, timeout=30) as client,
    ):
        big = np.zeros((1, 64, 64), np.float32)  # 16 KiB
        with pytest.raises(SmoothServeError) as error:
            client.predict("linear", big, n=10)
        assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.value.details
        assert client.predict("linear", np.zeros(LINEAR_SHAPE, np.float32), n=10).n == 10
