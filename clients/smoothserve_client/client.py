"""A typed, thread-safe client for the ``smoothserve.v1.SmoothServe`` service."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from .api.v1 import smoothserve_pb2 as pb
from .api.v1 import smoothserve_pb2_grpc as pb_grpc

MODES = {"certify": pb.MODE_CERTIFY, "predict": pb.MODE_PREDICT}
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class SmoothServeError(Exception):
    """A failed call: ``code`` is the gRPC status code, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class PredictResult:
    prediction: int  # -1 when abstaining
    label: str
    abstain: bool
    radius: float
    p_a_lower: float
    p_value: float
    candidate: int
    counts: tuple[int, ...]
    selection_counts: tuple[int, ...]
    mode: str
    n0: int
    n: int
    alpha: float
    sigma: float
    model_name: str
    model_version: str
    model_sha256: str
    server_time_seconds: float
    seed: int | None

    @classmethod
    def from_proto(cls, r: pb.PredictResponse) -> PredictResult:
        return cls(
            prediction=r.prediction,
            label=r.label,
            abstain=r.abstain,
            radius=r.radius,
            p_a_lower=r.p_a_lower,
            p_value=r.p_value,
            candidate=r.candidate,
            counts=tuple(r.counts),
            selection_counts=tuple(r.selection_counts),
            mode="certify" if r.mode == pb.MODE_CERTIFY else "predict",
            n0=r.n0,
            n=r.n,
            alpha=r.alpha,
            sigma=r.sigma,
            model_name=r.model_name,
            model_version=r.model_version,
            model_sha256=r.model_sha256,
            server_time_seconds=r.server_time_seconds,
            seed=r.seed if r.HasField("seed") else None,
        )


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    available_versions: tuple[str, ...]
    sha256: str
    sigma: float
    labels: tuple[str, ...]
    input_shape: tuple[int, ...]
    value_range: tuple[float, float]
    backend: str
    default_n0: int
    default_n: int
    default_alpha: float
    max_n: int
    state: str = "READY"
    failure_reason: str = ""
    max_alpha: float = 0.5
    min_n: int = 1

    @classmethod
    def from_proto(cls, m: pb.ModelInfo) -> ModelInfo:
        return cls(
            name=m.name,
            version=m.version,
            available_versions=tuple(m.available_versions),
            sha256=m.sha256,
            sigma=m.sigma,
            labels=tuple(m.labels),
            input_shape=tuple(m.input_shape),
            value_range=(m.value_low, m.value_high),
            backend=m.backend,
            default_n0=m.default_n0,
            default_n=m.default_n,
            default_alpha=m.default_alpha,
            max_n=m.max_n,
            state=m.state or "READY",
            failure_reason=m.failure_reason,
            max_alpha=m.max_alpha,
            min_n=m.min_n,
        )


def encode_tensor(image: np.ndarray) -> pb.Tensor:
    """uint8 stays uint8 (pixels 0-255); any float becomes float32 (pixels in [0, 1]).

    A 2-D array is taken as one channel.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[None]
    if array.dtype == np.uint8:
        dtype = pb.DTYPE_UINT8
    elif np.issubdtype(array.dtype, np.floating):
        array, dtype = array.astype("<f4"), pb.DTYPE_FLOAT32
    else:
        raise TypeError(f"images must be uint8 or float, not {array.dtype}")
    return pb.Tensor(shape=list(array.shape), dtype=dtype, data=np.ascontiguousarray(array).tobytes())


class SmoothServeClient:
    """Blocking client; safe to share between threads.

    ``tls_ca``/``tls_cert``/``tls_key`` (PEM bytes) enable TLS and mutual TLS; ``token`` is
    sent as ``authorization: Bearer <token>``.
    """

    def __init__(
        self,
        address: str,
        timeout: float | None = None,
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls_ca or tls_cert:
            credentials = grpc.ssl_channel_credentials(tls_ca, tls_key, tls_cert)
            self._channel = grpc.secure_channel(address, credentials, options)
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._stub = pb_grpc.SmoothServeStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def __enter__(self) -> SmoothServeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request, timeout: float | None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            details = error.details() or ""
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
                details += (
                    " -- the message exceeds a size limit: the server's --max-message-bytes"
                    " or this client's max_message_bytes"
                )
            raise SmoothServeError(error.code(), details) from None

    def predict(
        self,
        model_name: str,
        image: np.ndarray,
        mode: str = "certify",
        n0: int | None = None,
        n: int | None = None,
        alpha: float | None = None,
        seed: int | None = None,
        model_version: str = "",
        timeout: float | None = None,
    ) -> PredictResult:
        """Certify (or, with ``mode="predict"``, predict) one image.

        ``image`` is (C, H, W) or (H, W): uint8 pixels, or floats in the model's value range.
        Unset n0, n and alpha take the server's defaults.
        """
        options = pb.PredictOptions(mode=MODES[mode])
        for name, value in (("n0", n0), ("n", n), ("alpha", alpha), ("seed", seed)):
            if value is not None:
                setattr(options, name, value)
        request = pb.PredictRequest(
            model_name=model_name,
            model_version=model_version,
            input=encode_tensor(image),
            options=options,
        )
        return PredictResult.from_proto(self._call(self._stub.Predict, request, timeout))

    def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        response = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in response.models]

    def model_info(self, model_name: str, model_version: str = "", timeout: float | None = None) -> ModelInfo:
        request = pb.GetModelInfoRequest(model_name=model_name, model_version=model_version)
        return ModelInfo.from_proto(self._call(self._stub.GetModelInfo, request, timeout))
