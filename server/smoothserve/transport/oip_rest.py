"""The Open Inference Protocol over HTTP/REST (``/v2/...``), on aiohttp, sharing the data
plane, admission and metrics with the gRPC API. Supports Triton's binary tensor data extension
(``Inference-Header-Content-Length``), which ``tritonclient.http`` uses by default.

Errors are JSON ``{"error": "..."}`` with the HTTP status Triton would give.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable

import numpy as np
from aiohttp import web

from ..dataplane import DataPlane
from ..errors import InvalidArgument, SmoothServeError
from ..records import server_version
from ..tracing import REQUEST_ID
from . import oip
from .auth import FailureLimiter, peer_address, token_refusal
from .predict_call import answer
from .servicer import REQUEST_ID_KEY, status_of

log = logging.getLogger(__name__)
HEADER_LENGTH = "Inference-Header-Content-Length"
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 400,
               "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
               "INTERNAL": 500}  # fmt: skip
NUMPY = {"UINT8": np.uint8, "FP32": np.float32}
OPEN_PATHS = ("/v2/health/",)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def from_error(error: SmoothServeError) -> web.Response:
    return error_response(HTTP_STATUS.get(status_of(error).name, 500), str(error))


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header of a request and the binary data after it (the extension)."""
    try:
        length = len(body) if header_length is None else int(header_length)
        if not 0 <= length <= len(body):
            raise ValueError(f"{HEADER_LENGTH} {length} outside the body")
        header = json.loads(body[:length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(header, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return header, body[length:]


def input_bytes(header: dict, binary: bytes) -> tuple[str, list[int], bytes]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidArgument("ModelInfer takes one input tensor")
    tensor = inputs[0]
    datatype, shape = tensor.get("datatype", ""), tensor.get("shape", [])
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape[:9]):
        raise InvalidArgument("the input's shape must be a list of integers")
    if datatype not in NUMPY:
        raise InvalidArgument("input datatype must be UINT8 or FP32")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or not 0 <= size <= len(binary):
            raise InvalidArgument("binary_data_size does not fit the binary data sent")
        return datatype, shape, binary[:size]
    try:
        values = np.asarray(tensor.get("data", []), dtype=NUMPY[datatype]).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"the input's data do not fit {datatype}: {str(exc)[:80]}") from None
    return datatype, shape, values.astype(values.dtype.newbyteorder("<")).tobytes()


def json_values(tensor: oip.Tensor) -> list:
    if tensor.datatype == "BYTES":
        return [v.decode() for v in tensor.values]
    return tensor.values.tolist()


class RestServer:
    """The ``/v2`` endpoints; ``ready()`` says whether the server takes requests."""

    def __init__(
        self,
        plane: DataPlane,
        ready: Callable[[], bool],
        tokens: tuple[str, ...] = (),
        max_body_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.plane, self.ready, self.tokens = plane, ready, tokens
        self.limiter = FailureLimiter()
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self._auth])
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        self.app.add_routes([
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.server_ready),
            web.get("/v2", self.server_metadata),
            *[web.get(base, self.model_metadata) for base in (model, versioned)],
            *[web.get(base + "/ready", self.model_ready) for base in (model, versioned)],
            *[web.post(base + "/infer", self.infer) for base in (model, versioned)],
        ])  # fmt: skip
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=tls)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # the bound port, when 0 picked one

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if not self.tokens or request.path.startswith(OPEN_PATHS):
            return await handler(request)
        address = peer_address(request.remote or "unknown")
        if self.limiter.blocked(address):
            return error_response(429, "too many failed authentication attempts; retry later")
        headers = [(k.lower(), v) for k, v in request.headers.items()]
        reason = token_refusal(headers, self.tokens)
        if reason is None:
            return await handler(request)
        self.limiter.fail(address)
        if self.limiter.log_now(address) is not None:
            log.warning("refused %s from %s: %s", request.path, request.remote, reason)
        return error_response(401, reason)

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def server_ready(self, request: web.Request) -> web.Response:
        ready = self.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "smoothserve", "version": server_version(),
                                  "extensions": ["parameters", "binary_tensor_data"]})  # fmt: skip

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            info = self.plane.model_info(request.match_info["name"],
                                         request.match_info.get("version", ""))  # fmt: skip
        except SmoothServeError as error:
            return from_error(error)
        name, datatype, shape = oip.metadata_input(info)
        return web.json_response({
            "name": info.name, "versions": list(info.available_versions), "platform": oip.PLATFORM,
            "inputs": [{"name": name, "datatype": datatype, "shape": shape}],
            "outputs": [{"name": n, "datatype": d, "shape": s}
                        for n, d, s in oip.metadata_outputs(info)],
        })  # fmt: skip

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            info = self.plane.model_info(request.match_info["name"],
                                         request.match_info.get("version", ""))  # fmt: skip
        except SmoothServeError:
            return web.json_response({"ready": False}, status=400)
        ready = self.ready() and info.state == "READY"
        return web.json_response({"ready": ready}, status=200 if ready else 400)

    async def infer(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version", "")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, "request body over the size limit")
        try:
            header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
            problem = None
        except InvalidArgument as error:  # raised inside ``answer``, so the request is counted
            header, binary, problem = {}, b"", error
        given = header.get("id") if isinstance(header.get("id"), str) else None

        def make_input():
            if problem is not None:
                raise problem
            datatype, shape, data = input_bytes(header, binary)
            parameters = header.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise InvalidArgument("parameters must be a JSON object")
            return oip.to_input(name, version, datatype, shape, data, parameters)

        try:
            result = await answer(self.plane, name, make_input, None,
                                  given_id=given or request.headers.get(REQUEST_ID_KEY))  # fmt: skip
        except SmoothServeError as error:
            response = from_error(error)
            response.headers[REQUEST_ID_KEY] = REQUEST_ID.get()
            return response
        response = self._infer_response(header, result)
        response.headers[REQUEST_ID_KEY] = result.request_id
        return response

    def _infer_response(self, header: dict, result) -> web.Response:
        requested = {o.get("name"): o for o in header.get("outputs") or [] if isinstance(o, dict)}
        all_binary = bool((header.get("parameters") or {}).get("binary_data_output"))
        outputs, blobs = [], []
        for tensor in oip.outputs(result):
            if requested and tensor.name not in requested:
                continue
            wanted = (requested.get(tensor.name) or {}).get("parameters") or {}
            entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
            if wanted.get("binary_data", all_binary):
                blob = oip.raw_bytes(tensor)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = json_values(tensor)
            outputs.append(entry)
        body = {"model_name": result.model_name, "model_version": result.model_version,
                "parameters": oip.parameters(result), "outputs": outputs}  # fmt: skip
        body["id"] = result.request_id
        text = json.dumps(body).encode()
        if not blobs:
            return web.Response(body=text, content_type="application/json")
        return web.Response(body=text + b"".join(blobs), headers={HEADER_LENGTH: str(len(text))},
                            content_type="application/octet-stream")  # fmt: skip
