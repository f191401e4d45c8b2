"""SmoothServe's sampler, a Triton Python-backend model: votes of the base network on noisy
copies of one clean input, with the noise drawn next to the network.

One request row per segment (``max_batch_size`` rows per call):

- ``INPUT``  FP32   [*shape]  the clean input, in pixel space
- ``KEY``    UINT64 [4]       the job's noise key, drawn by SmoothServe from the request's
                              generator (OS entropy unless the request is seeded); required
- ``RANGE``  INT64  [2]       the first sample index of the segment and its number of samples
- ``SIGMA``  FP32   [1]       the noise level
- ``COUNTS`` INT64  [K]       (output) votes of the network, summing to the number of samples

Sample i of a job is x + sigma * eps_i with eps_i row i % B of block b = i // B, B being the
``block_samples`` parameter; block b is drawn from a generator keyed by
``SeedSequence(KEY, spawn_key=(b,))``. So the noise of sample i depends on the key, i and B alone,
never on how SmoothServe cut the job into segments: a seeded request is reproducible on the
same sampler configuration.

- ``device: "cpu"`` (the CPU twin): NumPy PCG64 seeded by that SeedSequence; the rows of a block
  are drawn in order (``standard_normal`` fills in C order, so the first rows of a block are the
  same however many are drawn), rows before the segment's first are drawn and dropped.
- ``device: "cuda"``: torch's Philox generator on the model instance's GPU, seeded by 64 bits of
  that SeedSequence; the whole block (B rows) is drawn at once, since the value torch's kernel
  puts in a row depends on the tensor's size, and the segment's rows are taken from it. The
  noisy batch goes to the network through BLS as a DLPack tensor on the GPU (no host copy), its
  logits come back on the GPU, and only the K counts leave the device.

The network is the model ``smoothserve_sampler_for`` at this sampler's version, called by BLS in
batches of ``network_rows`` (its max_batch_size), two in flight, so the next batch's noise is
drawn while the network runs. A request without a key, or with an all-zero key, is refused:
nothing here falls back to a fixed or time-based seed.
"""

import json
from collections import deque

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton: the key derivation alone (tests, references)
    pb_utils = None

KEY_WORDS = 4
IN_FLIGHT = 2  # network batches in flight per segment


def block_seed_sequence(key, block: int) -> np.random.SeedSequence:
    """The SeedSequence of one block of a job's samples: the job's key, spawned by block index."""
    return np.random.SeedSequence([int(k) for k in key], spawn_key=(int(block),))


def cpu_block_generator(key, block: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(block_seed_sequence(key, block)))


def philox_seed(key, block: int) -> int:
    """63 bits of the block's SeedSequence, for torch.Generator.manual_seed (Philox on CUDA)."""
    return int(block_seed_sequence(key, block).generate_state(1, np.uint64)[0] >> np.uint64(1))


def block_pieces(start: int, count: int, block: int):
    """(block index, first row within the block, rows) covering samples [start, start + count)."""
    index, end = start, start + count
    while index < end:
        b, within = divmod(index, block)
        rows = min(block - within, end - index)
        yield b, within, rows
        index += rows


def cpu_noise(key, start: int, count: int, block: int, shape) -> np.ndarray:
    """eps of samples [start, start + count) as the CPU sampler draws them (a reference)."""
    out = np.empty((count, *shape), np.float32)
    row = 0
    for b, within, rows in block_pieces(start, count, block):
        generator = cpu_block_generator(key, b)
        if within:
            generator.standard_normal((within, *shape), dtype=np.float32)
        generator.standard_normal(out=out[row : row + rows], dtype=np.float32)
        row += rows
    return out


class SamplerError(Exception):
    """A request the sampler refuses; its message goes back to the caller."""


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.network = parameters["smoothserve_sampler_for"]
        self.network_version = int(args["model_version"])
        self.network_input = parameters["network_input"]
        self.network_output = parameters["network_output"]
        self.half = parameters.get("network_input_type") == "TYPE_FP16"
        self.num_classes = int(parameters["num_classes"])
        self.rows = int(parameters["network_rows"])
        self.block = int(parameters["block_samples"])
        self.device = parameters.get("device", "cpu")
        inputs = {i["name"]: i for i in config["input"]}
        self.shape = tuple(int(d) for d in inputs["INPUT"]["dims"])
        if self.device == "cuda":
            import torch
            import torch.utils.dlpack

            self.torch = torch
            device_id = int(args.get("model_instance_device_id") or 0)
            self.cuda = torch.device("cuda", device_id)
            self.preferred = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, device_id)
        elif self.device != "cpu":
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")

    async def execute(self, requests):
        responses = []
        for request in requests:
            try:
                counts = await self.count_request(request)
                out = pb_utils.Tensor("COUNTS", counts)
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as exc:  # the caller gets the reason and no counts
                error = pb_utils.TritonError(f"sampler {self.network}: {exc}")
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses

    def _input(self, request, name, dtype):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise SamplerError(f"no {name} input")
        return np.asarray(tensor.as_numpy(), dtype)

    async def count_request(self, request) -> np.ndarray:
        try:
            keys = self._input(request, "KEY", np.uint64)
        except SamplerError:
            raise SamplerError("no noise key: refused (the sampler never picks a seed)") from None
        x = self._input(request, "INPUT", np.float32)
        ranges = self._input(request, "RANGE", np.int64)
        sigmas = self._input(request, "SIGMA", np.float32)
        rows = len(x)
        if keys.shape != (rows, KEY_WORDS) or ranges.shape != (rows, 2) or len(sigmas) != rows:
            raise SamplerError("INPUT, KEY, RANGE and SIGMA must have one row per segment")
        counts = np.zeros((rows, self.num_classes), np.int64)
        for row in range(rows):
            start, count = (int(v) for v in ranges[row])
            sigma = np.float32(sigmas[row].reshape(-1)[0])
            if not keys[row].any():
                raise SamplerError("an all-zero noise key: refused")
            if start < 0 or count < 0:
                raise SamplerError(f"bad sample range start={start} count={count}")
            if not (np.isfinite(sigma) and sigma > 0):
                raise SamplerError(f"sigma must be positive, got {sigma}")
            counts[row] = await self.count_segment(x[row], keys[row], start, count, sigma)
        return counts

    async def count_segment(self, x, key, start, count, sigma) -> np.ndarray:
        """Votes of the network on samples [start, start + count) of the job keyed ``key``."""
        if self.device == "cuda":
            return await self._count_cuda(x, key, start, count, sigma)
        votes = np.zeros(self.num_classes, np.int64)
        pending = deque()
        batch, filled, left = None, 0, count
        for b, within, rows in block_pieces(start, count, self.block):
            generator = cpu_block_generator(key, b)
            while within:  # rows of the block before the segment: drawn and dropped
                skip = min(within, self.rows)
                generator.standard_normal((skip, *self.shape), dtype=np.float32)
                within -= skip
            while rows:
                if batch is None:
                    batch, filled = np.empty((min(self.rows, left), *self.shape), np.float32), 0
                take = min(rows, len(batch) - filled)
                generator.standard_normal(out=batch[filled : filled + take], dtype=np.float32)
                filled, rows, left = filled + take, rows - take, left - take
                if filled == len(batch):
                    batch *= sigma  # x + sigma * eps in pixel space, as SmoothServe's host path
                    batch += x
                    pending.append(self._send(batch.astype(np.float16) if self.half else batch))
                    batch = None
                    if len(pending) >= IN_FLIGHT:
                        votes += await self._votes(pending.popleft())
        while pending:
            votes += await self._votes(pending.popleft())
        return votes

    def _send(self, batch, preferred=None):
        """Start a BLS call of the network on ``batch``; returns (future, batch, rows)."""
        if isinstance(batch, np.ndarray):
            tensor = pb_utils.Tensor(self.network_input, batch)
        else:  # a torch tensor on the GPU, handed over by DLPack without a copy
            tensor = pb_utils.Tensor.from_dlpack(
                self.network_input, self.torch.utils.dlpack.to_dlpack(batch)
            )
        options = {} if preferred is None else {"preferred_memory": preferred}
        request = pb_utils.InferenceRequest(
            model_name=self.network,
            model_version=self.network_version,
            requested_output_names=[self.network_output],
            inputs=[tensor],
            **options,
        )
        # async_exec submits at once (run in an executor): the next batch's noise is drawn while
        # the network runs; ``batch`` is kept alive until the answer is in
        return request.async_exec(), batch, len(batch)

    async def _logits(self, sent):
        future, _, rows = sent
        response = await future
        if response.has_error():
            raise SamplerError(f"network {self.network}: {response.error().message()}")
        logits = pb_utils.get_output_tensor_by_name(response, self.network_output)
        if logits is None:
            raise SamplerError(f"network {self.network} returned no {self.network_output}")
        return logits, rows

    async def _votes(self, sent) -> np.ndarray:
        tensor, rows = await self._logits(sent)
        logits = tensor.as_numpy()
        if logits.shape != (rows, self.num_classes):
            raise SamplerError(f"network logits of shape {logits.shape} for {rows} rows")
        return np.bincount(logits.argmax(axis=1), minlength=self.num_classes)

    # --- GPU: torch Philox on the device, DLPack into BLS (not run on the CPU-only dev VM) -----

    async def _count_cuda(self, x, key, start, count, sigma) -> np.ndarray:
        torch = self.torch
        votes = torch.zeros(self.num_classes, dtype=torch.int64, device=self.cuda)
        clean = torch.from_numpy(np.ascontiguousarray(x)).to(self.cuda)
        pending, parts, filled = deque(), [], 0
        dtype = torch.float16 if self.half else torch.float32

        def flush():
            batch = parts[0] if len(parts) == 1 else torch.cat(parts)
            batch = batch.to(dtype).contiguous()
            parts.clear()
            # the noise must be written before Triton's network reads it on its own stream
            torch.cuda.current_stream(self.cuda).synchronize()
            pending.append(self._send(batch, self.preferred))

        for b, within, rows in block_pieces(start, count, self.block):
            generator = torch.Generator(device=self.cuda)
            generator.manual_seed(philox_seed(key, b))
            eps = torch.randn(
                (self.block, *self.shape), generator=generator, device=self.cuda,
                dtype=torch.float32,
            )  # fmt: skip
            noisy = eps[within : within + rows].mul_(float(sigma)).add_(clean)
            while len(noisy):
                take = min(len(noisy), self.rows - filled)
                parts.append(noisy[:take])
                noisy, filled = noisy[take:], filled + take
                if filled == self.rows:
                    flush()
                    filled = 0
                    if len(pending) >= IN_FLIGHT:
                        votes += await self._cuda_votes(pending.popleft())
        if parts:
            flush()
        while pending:
            votes += await self._cuda_votes(pending.popleft())
        return votes.cpu().numpy()

    async def _cuda_votes(self, sent):
        torch = self.torch
        tensor, rows = await self._logits(sent)
        logits = torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).to(self.cuda)
        if tuple(logits.shape) != (rows, self.num_classes):
            raise SamplerError(f"network logits of shape {tuple(logits.shape)} for {rows} rows")
        return torch.bincount(logits.argmax(dim=1), minlength=self.num_classes)
