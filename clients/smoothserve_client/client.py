"""A typed, thread-safe client for the ``smoothserve.v1.SmoothServe`` service."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from .api.v1 import smoothserve_pb2 as pb
from .api.v1 import smoothserve_pb2_grpc as pb_grpc
from .types import MODES, PROCEDURES, ModelInfo, PredictResult, SigningKey

__all__ = ["ModelInfo", "PredictResult", "SmoothServeClient", "SmoothServeError", "encode_tensor"]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class SmoothServeError(Exception):
    """A failed call: ``code`` is the gRPC status code, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


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
    sent as ``authorization: Bearer <token>``. ``channel_options`` go to the gRPC channel, for
    example client-side round robin over the pods behind a headless Service
    (``dns:///smoothserve:50051`` with ``("grpc.lb_policy_name", "round_robin")``).
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
        channel_options: Sequence[tuple[str, object]] = (),
    ) -> None:
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *channel_options,
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

    def _call(self, method, request, timeout: float | None, metadata: tuple = ()):
        try:
            return method(request, timeout=timeout or self.timeout,
                          metadata=self._metadata + metadata)  # fmt: skip
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
        procedure: str = "fixed_n",
        target_radius: float | None = None,
        tolerance: float | None = None,
        sound_noise: bool | None = None,
        request_id: str | None = None,
    ) -> PredictResult:
        """Certify (or, with ``mode="predict"``, predict) one image.

        ``image`` is (C, H, W) or (H, W): uint8 pixels, or floats in the model's value range.
        Unset n0, n and alpha take the server's defaults. ``procedure`` "target_radius"
        (with ``target_radius``) or "anytime" (with an optional ``tolerance``, and the call's
        ``timeout`` as the deadline) certify sequentially, with ``n`` as the most samples.
        ``sound_noise=True`` asks for floating-point-sound noise (the image must be uint8, or
        floats on the model's 1/255 lattice); None leaves it to the model's config.
        ``request_id`` is sent as ``x-request-id``; the server's log lines of the request carry
        it (or the ID the server made, in ``result.request_id``).
        """
        options = pb.PredictOptions(mode=MODES[mode], procedure=PROCEDURES[procedure])
        values = {"n0": n0, "n": n, "alpha": alpha, "seed": seed,
                  "target_radius": target_radius, "tolerance": tolerance,
                  "sound_noise": sound_noise}  # fmt: skip
        for name, value in values.items():
            if value is not None:
                setattr(options, name, value)
        request = pb.PredictRequest(
            model_name=model_name,
            model_version=model_version,
            input=encode_tensor(image),
            options=options,
        )
        extra = (("x-request-id", request_id),) if request_id else ()
        return PredictResult.from_proto(self._call(self._stub.Predict, request, timeout, extra))

    def signing_key(self, timeout: float | None = None) -> SigningKey:
        """The public key that signs this server's certificate records."""
        return SigningKey.from_proto(
            self._call(self._stub.GetSigningKey, pb.GetSigningKeyRequest(), timeout)
        )

    def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        response = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in response.models]

    def model_info(self, model_name: str, model_version: str = "", timeout: float | None = None) -> ModelInfo:
        request = pb.GetModelInfoRequest(model_name=model_name, model_version=model_version)
        return ModelInfo.from_proto(self._call(self._stub.GetModelInfo, request, timeout))
