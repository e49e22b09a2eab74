"""A sample detector version that turns bad in production: the fault-injection runner for tests and benchmarks.

Same network and contract as ``detector_model.py``; after ``after_requests`` requests served by
this process it misbehaves as ``fault.json`` says, on the dense head RAW [N, cells, 5 + classes]
(objectness logit, tx, ty, tw, th, class logits):

    nan       every value NaN (the NMS step keeps NaN scores: NaN reaches the client)
    empty     objectness far below any threshold: no detections at all
    shifted   every box moved by half its size right and down: IoU with the truth under 0.5
    confused  classes 0<->1 and 2<->3 swapped
    errors    an error response for every request
    slow      the same answer, after sleeping four times the network's own time (5x the cost)

With ``after_requests: 0`` it is bad from the first request (the sample's ``failing`` variant).
The promote checks run in the candidate's own process, so a version built with
``after_requests`` above what they send passes them and fails later, like a model that breaks
on live traffic. The wall time of the first bad response goes to ``mark``.
"""

import json
import os
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

EMPTY_LOGIT = -1.0e3


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        with open(os.path.join(folder, "fault.json")) as handle:
            fault = json.load(handle)
        self.mode = fault["mode"]
        self.after = int(fault["after_requests"])
        self.mark = fault.get("mark")
        self.served = 0

    def _bad(self, raw, elapsed):
        if self.mark and not os.path.exists(self.mark):
            with open(self.mark, "w") as handle:
                handle.write(repr(time.time()))
        if self.mode == "errors":
            raise RuntimeError("injected fault: backend error")
        if self.mode == "slow":
            time.sleep(4 * elapsed)
            return raw
        out = raw.copy()
        if self.mode == "nan":
            out[:] = np.nan
        elif self.mode == "empty":
            out[..., 0] = EMPTY_LOGIT
        elif self.mode == "shifted":
            out[..., 1] += 0.5 * raw[..., 3]
            out[..., 2] += 0.5 * raw[..., 4]
        elif self.mode == "confused":
            out[..., 5:9] = raw[..., [6, 5, 8, 7]]
        return out

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
                started = time.perf_counter()
                results = self.session.run(self.outputs, feeds)
                elapsed = time.perf_counter() - started
                self.served += 1
                if self.served > self.after:
                    results = [self._bad(results[0], elapsed), *results[1:]]
                tensors = [pb_utils.Tensor(name, value) for name, value in zip(self.outputs, results, strict=True)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
