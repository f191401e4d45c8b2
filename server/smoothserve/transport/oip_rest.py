"""The Open Inference Protocol over HTTP/REST (``/v2/...``), on aiohttp, sharing the data
plane, admission and metrics with the gRPC API. Supports Triton's binary tensor data extension
(``Inference-Header-Content-Length``), which ``tritonclient.http`` uses by default.

Errors are JSON ``{"error": "..."}`` with the HTTP status Triton would give.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..dataplane import DataPlane
from ..errors import REQUEST_ID_KEY, InvalidArgument, SmoothServeError, http_status
from ..records import server_version
from ..request import PredictInput
from ..tracing import REQUEST_ID
from . import oip
from .auth import MISSING, FailureLimiter, address_key, token_refusal
from .http_server import HttpDoor, HttpLimits
from .predict_call import answer, refused_unread

log = logging.getLogger(__name__)
HEADER_LENGTH = "Inference-Header-Content-Length"
OPEN_PATHS = ("/v2/health/",)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def from_error(error: SmoothServeError) -> web.Response:
    return error_response(http_status(error), str(error))


# A JSON body holds at most this much per input value, plus the rest of the request; larger
# bodies are refused before they are parsed (parsing holds the event loop's GIL).
JSON_BYTES_PER_VALUE = 40
JSON_OVERHEAD_BYTES = 64 * 1024
REPOSITORY_BODY_BYTES = 64 * 1024  # a repository call's JSON body (parameters, ready)


@dataclass(frozen=True)
class InferCall:
    """A REST ModelInfer request, checked: the data plane's input, the outputs asked for
    (name -> binary or not; empty: all) and the request's id."""

    input: PredictInput
    outputs: dict[str, bool]
    binary_default: bool
    id: str | None


def body_limits(input_elements: int) -> tuple[int, int]:
    """(JSON bytes, binary bytes) a request for an input of this many values may send."""
    return JSON_OVERHEAD_BYTES + JSON_BYTES_PER_VALUE * input_elements, 4 * input_elements


@web.middleware
async def json_errors(request: web.Request, handler):
    """aiohttp's own refusals (unknown route, wrong method) as the protocol's JSON errors."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = error_response(error.status, error.reason)
        if "Allow" in error.headers:  # 405: the methods the route takes
            response.headers["Allow"] = error.headers["Allow"]
        return response


def split_body(body: bytes, header_length: str | None, json_limit: int) -> tuple[dict, bytes]:
    """The JSON header of a request and the binary data after it (the extension)."""
    try:
        length = len(body) if header_length is None else int(header_length)
        if not 0 <= length <= len(body):
            raise ValueError(f"{HEADER_LENGTH} {length} outside the body")
        if length > json_limit:
            raise InvalidArgument(f"the JSON part of the request is over {json_limit} bytes")
        header = json.loads(body[:length])
    except RecursionError:
        raise InvalidArgument("the request body's JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(header, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return header, body[length:]


def _object(value: object, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def requested_outputs(header: dict) -> tuple[dict[str, bool], bool]:
    """The outputs asked for (name -> binary), and the request's binary_data_output."""
    binary_default = _object(header.get("parameters"), "parameters").get("binary_data_output")
    if not isinstance(binary_default, bool | None):
        raise InvalidArgument("parameter binary_data_output must be a boolean")
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidArgument("outputs must be a list of objects")
    oip.check_outputs([o.get("name") for o in outputs])
    wanted = {}
    for output in outputs:
        binary = _object(output.get("parameters"), "an output's parameters").get("binary_data")
        if not isinstance(binary, bool | None):
            raise InvalidArgument("an output's binary_data must be a boolean")
        wanted[output["name"]] = bool(binary_default) if binary is None else binary
    return wanted, bool(binary_default)


def input_data(header: dict, binary: bytes) -> tuple[object, object, bytes | list]:
    """(datatype, shape, data) of the one input: its binary bytes (the extension) or its JSON
    values; both, or binary bytes beyond the input's, are ambiguous and refused."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidArgument("ModelInfer takes one input tensor")
    tensor = inputs[0]
    parameters = _object(tensor.get("parameters"), "the input's parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if binary:
            raise InvalidArgument("binary data sent without the input's binary_data_size")
        return tensor.get("datatype"), tensor.get("shape", []), tensor.get("data", [])
    if "data" in tensor:
        raise InvalidArgument("the input has both data and binary_data_size; send one")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise InvalidArgument("binary_data_size does not match the binary data sent")
    return tensor.get("datatype"), tensor.get("shape", []), binary


def parse_infer(
    body: bytes,
    header_length: str | None,
    name: str,
    version: str,
    json_limit: int,
    model_shape: tuple[int, ...] = (),
) -> InferCall:
    """A request body checked whole, cheap checks first (run off the event loop);
    ``model_shape``: the model's input shape (``oip.model_input_shape``)."""
    header, binary = split_body(body, header_length, json_limit)
    request_id = header.get("id")
    if not isinstance(request_id, str | None):
        raise InvalidArgument("id must be a string")
    outputs, binary_default = requested_outputs(header)
    datatype, shape, data = input_data(header, binary)
    parameters = _object(header.get("parameters"), "parameters")
    call = oip.to_input(name, version, datatype, shape, data, parameters,
                        model_shape=model_shape)  # fmt: skip
    return InferCall(call, outputs, binary_default, request_id)


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
        limiter: FailureLimiter | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        self.plane, self.ready, self.tokens = plane, ready, tokens
        # app.py shares the gRPC interceptor's (an empty limiter is falsy: test for None)
        self.limiter = FailureLimiter() if limiter is None else limiter
        self.limits = limits or HttpLimits()
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[json_errors, self._auth])
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        self.app.add_routes([
            # before /v2/models/{name}, which would take "stats" for a model's name
            web.get("/v2/models/stats", self.statistics),
            web.post("/v2/repository/index", self.repository_index),
            web.post("/v2/repository/models/{name}/load", self.load_model),
            web.post("/v2/repository/models/{name}/unload", self.unload_model),
            *[web.get(base + "/stats", self.statistics) for base in (model, versioned)],
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.server_ready),
            web.get("/v2", self.server_metadata),
            *[web.get(base, self.model_metadata) for base in (model, versioned)],
            *[web.get(base + "/config", self.model_config) for base in (model, versioned)],
            *[web.get(base + "/ready", self.model_ready) for base in (model, versioned)],
            *[web.post(base + "/infer", self.infer) for base in (model, versioned)],
        ])  # fmt: skip
        self.door = HttpDoor(self.app, "REST port", self.limits)

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Serve on ``host:port`` within ``limits`` (http_server.py); return the bound port."""
        return await self.door.start(host, port, tls)

    async def stop(self) -> None:
        await self.door.stop()

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if not self.tokens or request.path.startswith(OPEN_PATHS):
            return await handler(request)
        remote = request.remote or "unknown"
        address = address_key(remote) or remote
        if self.limiter.blocked(address):
            return error_response(429, "too many failed authentication attempts; retry later")
        headers = [(k.lower(), v) for k, v in request.headers.items()]
        reason = token_refusal(headers, self.tokens)
        if reason is None:
            return await handler(request)
        if reason != MISSING:  # as the gRPC interceptor: only guesses are charged
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
                                  "extensions": [*oip.EXTENSIONS, "binary_tensor_data"]})  # fmt: skip

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

    async def model_config(self, request: web.Request) -> web.Response:
        """``oip.model_config``: the same config as gRPC's ``ModelConfig``."""
        try:
            info = self.plane.model_info(request.match_info["name"],
                                         request.match_info.get("version", ""))  # fmt: skip
        except SmoothServeError as error:
            return from_error(error)
        return web.json_response(oip.model_config(info))

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            info = self.plane.model_info(request.match_info["name"],
                                         request.match_info.get("version", ""))  # fmt: skip
        except SmoothServeError:
            return web.json_response({"ready": False}, status=400)
        ready = self.ready() and info.state == "READY"
        return web.json_response({"ready": ready}, status=200 if ready else 400)

    # -- the statistics and model repository extensions (docs/api.md) -------------------------

    async def statistics(self, request: web.Request) -> web.Response:
        try:
            stats = self.plane.statistics(request.match_info.get("name", ""),
                                          request.match_info.get("version", ""))  # fmt: skip
        except SmoothServeError as error:
            return from_error(error)
        return web.json_response(
            {"model_stats": [s.to_json(name, version) for name, version, s in stats]}
        )

    async def repository_index(self, request: web.Request) -> web.Response:
        try:
            body = await self._small_json(request)
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidArgument("ready must be a boolean")
            control = oip.repository_control(self.plane)
        except SmoothServeError as error:
            return from_error(error)
        return web.json_response([
            {"name": e.name, **({"version": e.version} if e.version else {}), "state": e.state,
             **({"reason": e.reason} if e.reason else {})}
            for e in control.index(ready)
        ])  # fmt: skip

    async def load_model(self, request: web.Request) -> web.Response:
        try:
            body = await self._small_json(request)
            oip.check_load_parameters(_object(body.get("parameters"), "parameters"))
            await oip.repository_control(self.plane).request_load(request.match_info["name"])
        except SmoothServeError as error:
            return from_error(error)
        return web.Response(status=200)

    async def unload_model(self, request: web.Request) -> web.Response:
        try:
            body = await self._small_json(request)
            _object(body.get("parameters"), "parameters")  # unload_dependents: no dependents
            await oip.repository_control(self.plane).request_unload(request.match_info["name"])
        except SmoothServeError as error:
            return from_error(error)
        return web.Response(status=200)

    async def _small_json(self, request: web.Request) -> dict:
        """A repository call's optional JSON body (at most REPOSITORY_BODY_BYTES)."""
        if (request.content_length or 0) > REPOSITORY_BODY_BYTES:
            raise InvalidArgument(f"the request body is over {REPOSITORY_BODY_BYTES} bytes")
        body = await self._read_body(request)
        if not body.strip():
            return {}
        header, _ = split_body(body, None, REPOSITORY_BODY_BYTES)
        return header

    async def infer(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version", "")
        call, problem = None, None
        try:
            info = self.plane.model_info(name, version)
            json_limit, binary_limit = body_limits(math.prod(info.input_shape))
            if (request.content_length or 0) > json_limit + binary_limit:
                return self._too_large(request, "request body over the size limit for this model")
            body = await self._read_body(request)
            if len(body) > json_limit + binary_limit:
                return self._too_large(request, "request body over the size limit for this model")
            call = await asyncio.to_thread(
                parse_infer, body, request.headers.get(HEADER_LENGTH), name, version, json_limit,
                info.input_shape,
            )  # fmt: skip
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(request, "request body over the size limit")
        except SmoothServeError as error:  # raised inside ``answer``, so the request is counted
            problem = error

        def make_input():
            if problem is not None:
                raise problem
            return call.input

        given = call.id if call is not None else None
        try:
            result = await answer(self.plane, name, make_input, None,
                                  given_id=given or request.headers.get(REQUEST_ID_KEY))  # fmt: skip
        except SmoothServeError as error:
            response = from_error(error)
            response.headers[REQUEST_ID_KEY] = REQUEST_ID.get()
            return response
        response = self._infer_response(call, result)
        response.headers[REQUEST_ID_KEY] = result.request_id
        return response

    def _too_large(self, request: web.Request, message: str) -> web.Response:
        """413, counted and logged as a Predict refused before it was read (the body is not)."""
        response = error_response(413, message)
        given = request.headers.get(REQUEST_ID_KEY)
        response.headers[REQUEST_ID_KEY] = refused_unread(self.plane, "RESOURCE_EXHAUSTED", given)
        return response

    @staticmethod
    async def _read_body(request: web.Request) -> bytes:
        """The body, decoded; a body that does not decode as its Content-Encoding says is
        the client's mistake (400), not the server's."""
        try:
            return await request.read()
        except web.HTTPException:
            raise
        except (ValueError, RequestPayloadError, HttpProcessingError) as exc:
            raise InvalidArgument(f"the request body could not be read: {str(exc)[:80]}") from None

    def _infer_response(self, call: InferCall, result) -> web.Response:
        outputs, blobs = [], []
        for tensor in oip.outputs(result):
            if call.outputs and tensor.name not in call.outputs:
                continue
            entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
            if call.outputs.get(tensor.name, call.binary_default):
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
