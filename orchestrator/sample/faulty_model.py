"""A sample version that turns bad in production: the fault-injection runner for tests and benchmarks.

Same network and contract as the sample; after ``after_requests`` requests served by this
process it misbehaves as ``fault.json`` says: nan, zeros, exploding, divergent (classes
shifted), slow (sleep), errors (error responses), crash (the backend process dies) or
drift (images brighter than any in the golden set, mean above ``bright_above``, all come
out as class 0: a version that passes every golden check and fails on live inputs).
The promote checks run in the candidate's own process, so a version built with
``after_requests`` above what they send passes them and fails later, like a model that
breaks on live traffic. The wall time of the first bad response goes to ``mark``.

With ``only_on`` (``{"env": "ORCH_SAMPLE_HARDWARE", "values": ["jetson-nano"]}``) the fault is
active only where that environment variable of the backend's process holds one of the values
(a plan that misbehaves on one GPU only); elsewhere the version stays good for ever.
"""

import json
import os
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class InjectedError(RuntimeError):
    """The ``errors`` fault: raised out of ``execute`` so Triton counts the request as failed (an error
    response built here would count as a success in Triton's statistics)."""


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
        self.bright_above = float(fault.get("bright_above", 0.8))
        self.served = 0
        only_on = fault.get("only_on")
        self.active = not only_on or os.environ.get(only_on["env"], "") in only_on["values"]

    def _bad(self, results, feeds):
        if self.mode == "drift":
            images = feeds[self.inputs[0]]
            bright = images.reshape(len(images), -1).mean(axis=1) > self.bright_above
            if not bright.any():
                return results
            out = results[0].copy()
            out[bright, 0] = out[bright].max(axis=1) + 5.0
            results = [out, *results[1:]]
        if self.mark and not os.path.exists(self.mark):
            with open(self.mark, "w") as handle:
                handle.write(repr(time.time()))
        if self.mode == "crash":
            os._exit(1)
        if self.mode == "slow":
            time.sleep(0.05)
            return results
        if self.mode == "errors":
            raise InjectedError("injected fault: backend error")
        out = results[0]
        if self.mode == "drift":
            return results
        if self.mode == "nan":
            out = np.full_like(out, np.nan)
        elif self.mode == "zeros":
            out = np.zeros_like(out)
        elif self.mode == "exploding":
            out = out * np.float32(1e12)
        elif self.mode == "divergent":
            out = np.roll(out, 3, axis=-1)
        return [out, *results[1:]]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
                results = self.session.run(self.outputs, feeds)
                self.served += 1
                if self.active and self.served > self.after:
                    results = self._bad(results, feeds)
                tensors = [pb_utils.Tensor(name, value) for name, value in zip(self.outputs, results, strict=True)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except InjectedError:
                raise
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
