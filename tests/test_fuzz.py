"""Request validation never fails with anything but InvalidArgument or NotFound, whatever
the shape, dtype, bytes, values or sampling options; and a live server survives a fuzzer."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smoothserve.config import ServerConfig
from smoothserve.dataplane import CERTIFY, PREDICT, DataPlane, PredictInput, decode_input
from smoothserve.errors import InvalidArgument, NotFound
from smoothserve.metrics import Metrics
from smoothserve.repository import scan
from smoothserve.transport.servicer import to_input
from smoothserve_client.api.v1 import smoothserve_pb2 as pb
from smoothserve_dev.models import write_linear_model

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def plane(tmp_path_factory) -> DataPlane:
    repo = tmp_path_factory.mktemp("fuzz-repo")
    write_linear_model(repo, "lin", np.full(64, 1 / 8), -4.0, 0.25, SHAPE)
    config = ServerConfig.from_args(["--max-n", "5000", "--max-n0", "500", "--default-n", "1000"], environ={})
    return DataPlane(scan(repo).ready, {}, config, Metrics())


def validate(plane: DataPlane, request: PredictInput) -> None:
    """What the data plane does before sampling; on success, check what it returns."""
    try:
        model = plane.resolve(request.model_name, request.model_version)
        x = decode_input(request, model)
        mode, n0, n, alpha = plane.sampling_plan(request)
    except (InvalidArgument, NotFound) as error:
        assert str(error)
        return
    assert x.dtype == np.float32 and x.shape == SHAPE
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
    assert 1 <= n <= plane.config.max_n and 0 < alpha < 0.5 and math.isfinite(alpha)
    assert mode == PREDICT or 1 <= n0 <= plane.config.max_n0


int64 = st.integers(-(2**63), 2**63 - 1)
special_floats = st.sampled_from([0.0, -0.0, 1.0, 1.0000001, -1e-45, math.nan, math.inf, -math.inf])
good_floats = st.lists(st.floats(0, 1, width=32), min_size=64, max_size=64).map(
    lambda v: np.float32(v).tobytes()
)
any_floats = st.lists(st.floats(width=32) | special_floats, min_size=64, max_size=64).map(
    lambda v: np.float32(v).tobytes()
)
data = st.binary(max_size=600) | good_floats | any_floats | st.binary(min_size=64, max_size=64)
shapes = st.just(SHAPE) | st.lists(int64, max_size=6).map(tuple) | st.sampled_from(
    [(64,), (8, 8), (1, 8, 8, 1), (0, 8, 8), (-1, 8, 8), (2**62, 2**62, 4)]
)
names = st.sampled_from(["lin", "", "other"]) | st.text(max_size=30)
versions = st.sampled_from(["", "1", "2", "01"]) | st.text(max_size=10)
optional_ints = st.none() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, 500, 501, 5000, 5001])
alphas = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 0.5])
inputs = st.builds(
    PredictInput,
    model_name=names,
    model_version=versions,
    shape=shapes,
    dtype=st.sampled_from(["float32", "uint8", "", "float64", "int8"]),
    data=data,
    mode=st.sampled_from([CERTIFY, PREDICT, "", "other"]),
    n0=optional_ints,
    n=optional_ints,
    alpha=alphas,
    seed=st.none() | st.integers(0, 2**64 - 1),
)


@SETTINGS
@given(request=inputs)
def test_validation_raises_only_clear_errors(plane, request):
    validate(plane, request)


@st.composite
def protos(draw) -> pb.PredictRequest:
    request = pb.PredictRequest(
        model_name=draw(names),
        model_version=draw(versions),
        input=pb.Tensor(
            shape=draw(st.lists(int64, max_size=6) | st.just(list(SHAPE))),
            dtype=draw(st.integers(-(2**31), 2**31 - 1) | st.sampled_from([1, 2])),
            data=draw(data),
        ),
    )
    options = request.options
    options.mode = draw(st.integers(-(2**31), 2**31 - 1) | st.sampled_from([0, 1]))
    for field in ("n0", "n"):
        value = draw(st.none() | int64 | st.integers(0, 6000))
        if value is not None:
            setattr(options, field, value)
    alpha = draw(alphas)
    if alpha is not None:
        options.alpha = alpha
    seed = draw(st.none() | st.integers(0, 2**64 - 1))
    if seed is not None:
        options.seed = seed
    return request


@SETTINGS
@given(request=protos())
def test_proto_conversion_and_validation(plane, request):
    try:
        converted = to_input(request)
    except InvalidArgument:
        return
    validate(plane, converted)


@SETTINGS
@given(blob=st.binary(max_size=300))
def test_random_bytes_parse_or_fail_cleanly(plane, blob):
    from google.protobuf.message import DecodeError

    try:
        request = pb.PredictRequest.FromString(blob)
    except DecodeError:
        return  # the server answers these INVALID_ARGUMENT (see the live fuzz below)
    try:
        converted = to_input(request)
    except InvalidArgument:
        return
    validate(plane, converted)


def test_live_fuzz_short():
    """300 hostile requests on each door (native gRPC, OIP gRPC, OIP REST) of one server."""
    spec = importlib.util.spec_from_file_location("fuzz_script", ROOT / "scripts" / "fuzz.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    report = fuzz.run(count=300, seed=1)
    assert report["server_alive_after"] and report["server_exit_code"] == 0
    assert report["tracebacks_in_server_log"] == 0
    assert report["server_rss_growth_mib"] < 100
    for door in fuzz.DOORS:
        assert report[door]["failures"] == 0, report[door]["failure_examples"]
        assert report[door]["final_valid_request_ok"], door
    codes = report["native"]["codes"]
    assert codes.get("OK", 0) > 0 and codes.get("INVALID_ARGUMENT", 0) > 0  # both paths ran
    assert "UNKNOWN" not in codes and "INTERNAL" not in codes
    oip_codes = report["oip_grpc"]["codes"]
    assert oip_codes.get("OK", 0) > 0 and oip_codes.get("INVALID_ARGUMENT", 0) > 0
    statuses = report["rest"]["statuses"]
    assert statuses.get("200", 0) > 0 and statuses.get("400", 0) > 0
    assert not any(status.startswith("5") for status in statuses)
