"""The sampler model for Triton: one command writes, for each smoothed model, a companion
Python-backend model ``<model>_sampler`` (``model.py`` here) that takes the clean input once,
draws the noise next to the network, runs it by BLS and returns K vote counts.

    python -m smoothserve.triton_sampler --model-repo model_repo --out triton_samplers --target gpu

``--target gpu``: torch Philox on the instance's GPU (the Triton image needs torch in the Python
backend's environment: ``deploy/triton/Dockerfile``); ``--target cpu``: NumPy PCG64 on the CPU
(the CPU twin of the tests). Serve the output next to the networks (``tritonserver
--model-repository=/models --model-repository=/samplers``); SmoothServe finds the samplers in
Triton's repository index at start-up (``backends/triton.py``). An ensemble (a denoiser, then
a classifier: ``repository.py``) gets a sampler like any smoothed model: the sampler calls the
ensemble by BLS, and Triton's ensemble scheduler runs its steps.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from google.protobuf import text_format

from smoothcert.model_config import SmoothModelConfig
from smoothcert.schema.model_config_pb2 import DataType, InstanceGroup, ModelConfig

SAMPLER_SUFFIX = "_sampler"
SAMPLER_PARAMETER = "smoothserve_sampler_for"  # names the network; marks a config as a sampler
TARGETS = {"gpu": ("cuda", InstanceGroup.KIND_GPU), "cpu": ("cpu", InstanceGroup.KIND_CPU)}
SEGMENTS_PER_CALL = 256  # the sampler's max_batch_size: segments (request rows) per call
CALLS_PER_REQUEST = 16  # default samples per call: this many network batches


def sampler_name(model: str) -> str:
    return model + SAMPLER_SUFFIX


def network_rows(config: SmoothModelConfig, cap: int = 1024) -> int:
    """Rows per network call: the network's max_batch_size (``cap`` when it batches freely)."""
    return config.max_batch_size if config.max_batch_size > 0 else cap


def sampler_config(
    config: SmoothModelConfig,
    target: str = "gpu",
    instances: int = 1,
    samples_per_call: int | None = None,
    block_samples: int | None = None,
) -> str:
    """``config.pbtxt`` of the sampler of the network ``config`` describes."""
    device, kind = TARGETS[target]
    rows = network_rows(config)
    block = block_samples or rows  # one block is one network batch: nothing drawn in vain
    proto = ModelConfig(name=sampler_name(config.name), backend="python")
    proto.max_batch_size = SEGMENTS_PER_CALL
    proto.input.add(name="INPUT", data_type=DataType.TYPE_FP32, dims=config.input_shape)
    proto.input.add(name="KEY", data_type=DataType.TYPE_UINT64, dims=[4])
    proto.input.add(name="RANGE", data_type=DataType.TYPE_INT64, dims=[2])
    proto.input.add(name="SIGMA", data_type=DataType.TYPE_FP32, dims=[1])
    proto.output.add(name="COUNTS", data_type=DataType.TYPE_INT64, dims=[config.num_classes])
    proto.instance_group.add(count=instances, kind=kind)
    parameters = {
        SAMPLER_PARAMETER: config.name,
        "network_input": config.input_name,
        "network_output": config.output_name,
        "network_input_type": config.input_data_type,
        "num_classes": str(config.num_classes),
        "network_rows": str(rows),
        "block_samples": str(block),
        "samples_per_call": str(samples_per_call or CALLS_PER_REQUEST * rows),
        "device": device,
    }
    for key, value in parameters.items():
        proto.parameters[key].string_value = value
    return text_format.MessageToString(proto)


def sampler_model_py() -> str:
    return resources.files(__package__).joinpath("model.py").read_text()


def write_sampler(
    config: SmoothModelConfig,
    versions: list[str],
    dest: Path,
    target: str = "gpu",
    **options,
) -> Path:
    """Write ``dest/<model>_sampler`` (config and one ``model.py`` per network version)."""
    model_dir = Path(dest) / sampler_name(config.name)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(sampler_config(config, target, **options))
    code = sampler_model_py()
    for version in versions:
        (model_dir / version).mkdir(exist_ok=True)
        (model_dir / version / "model.py").write_text(code)
    return model_dir


def write_samplers(
    model_repo: Path, dest: Path, target: str = "gpu", only: tuple[str, ...] = (), **options
) -> list[str]:
    """The samplers of every model of ``model_repo`` (or of those in ``only``); their names.
    Models of another noise family than Gaussian get none: the sampler draws Gaussian noise
    (the server sends their batches to Triton as noisy copies drawn on the host)."""
    from .. import repository

    models = repository.scan(Path(model_repo)).ready
    written = []
    for name, versions in sorted(models.items()):
        if only and name not in only:
            continue
        config = next(iter(versions.values())).config
        if config.noise_family != "gaussian":
            print(f"{name}: {config.noise_family} noise; the sampler draws Gaussian noise only, "
                  "so none is written (SmoothServe sends its noisy copies to Triton)")  # fmt: skip
            continue
        write_sampler(config, sorted(versions), dest, target, **options)
        written.append(sampler_name(name))
    return written
