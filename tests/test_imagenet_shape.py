"""The ImageNet shape served for real: a ResNet-50 saved in the literature's layout (random
weights, generated here, never committed), imported, and certified at 3x224x224 through gRPC
on the embedded backend (tests/test_importer.py) and through the Triton-side sampler here:
the clean input goes to Triton, the noise is drawn and the network run there."""

from __future__ import annotations

import numpy as np
import pytest
from servers import metric
from triton_helpers import require_tritonserver, triton_args

from smoothserve_client import SmoothServeClient
from smoothserve_dev.testing import ServerProcess
from smoothserve_dev.triton_twin import TritonProcess, build_twin_repository, scrape

torch = pytest.importorskip("torch")
nn = torch.nn
importer = pytest.importorskip("smoothtrain.importer")

pytestmark = pytest.mark.timeout(600)
SHAPE = (3, 224, 224)


def test_imported_resnet50_is_certified_through_the_triton_sampler(tmp_path):
    require_tritonserver()
    from smoothtrain import published

    torch.manual_seed(0)
    model = published.build_model("resnet50", published.DATASETS["imagenet"]).eval()
    saved = nn.Sequential(model[0], nn.DataParallel(model[1]))
    ckpt = tmp_path / "resnet50" / "noise_0.25" / "checkpoint.pth.tar"
    ckpt.parent.mkdir(parents=True)
    torch.save({"epoch": 90, "arch": "resnet50", "state_dict": saved.state_dict()}, ckpt)
    repo = tmp_path / "repo"
    importer.main(["import", str(ckpt), "--name", "r50", "--model-repo", str(repo),
                   "--verify-batch", "1", "--threads", "1"])  # fmt: skip
    build_twin_repository(repo, tmp_path / "twin", samplers=True)
    image = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    with TritonProcess(tmp_path / "twin", start_timeout=300) as triton:
        with ServerProcess(repo, triton_args(triton.url)) as server:
            with SmoothServeClient(server.address, timeout=300) as client:
                info = client.model_info("r50")
                result = client.predict("r50", image, n0=4, n=12, alpha=0.01, seed=7)
            sampled = metric(server.metrics_url, "smoothserve_noisy_samples_total")
        calls = scrape(triton.metrics_url, "nv_inference_count")
    assert info.sigma == 0.25 and tuple(info.input_shape) == SHAPE and len(info.labels) == 1000
    assert result.n == 12 and (result.abstain or 0 <= result.prediction < 1000)
    sampler_calls = sum(v for k, v in calls.items() if 'model="r50_sampler"' in k)
    assert sampler_calls >= 1, calls  # the votes came from the sampler, not noisy batches
    assert sampled >= 16
