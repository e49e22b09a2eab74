"""Triton python-backend runner of the sample detector's network (CPU, onnxruntime).

Shipped as ``model.py`` in every version folder of ``detector``, next to ``model.onnx``:
INPUT float32 [N, 3, H, W] -> RAW float32 [N, cells, 5 + classes], the dense head that the
``detector_nms`` step turns into boxes. It knows nothing about the orchestrator: it reads the
tensor names from the model's config.
"""

import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        # One thread per instance: on the edge device the network shares the CPU with its steps.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(folder, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
                results = self.session.run(self.outputs, feeds)
                tensors = [pb_utils.Tensor(name, value) for name, value in zip(self.outputs, results, strict=True)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # an error response, not a crashed stub
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
