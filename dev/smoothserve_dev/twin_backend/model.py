"""Python-backend twin of an onnxruntime_onnx model: the same model.onnx on the CPU."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        threads = int(config.get("parameters", {}).get("twin_threads", {}).get("string_value", 1))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        arrays = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        batch = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        (logits,) = self.session.run(
            [self.output_name], {self.input_name: batch.astype(np.float32, copy=False)}
        )
        responses, offset = [], 0
        for array in arrays:
            rows = logits[offset : offset + len(array)]
            offset += len(array)
            out = pb_utils.Tensor(self.output_name, np.ascontiguousarray(rows, np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
