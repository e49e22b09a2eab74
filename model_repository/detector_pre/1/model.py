"""Triton python-backend step ``detector_pre``: camera frames in, the detector's input out.

IMAGE uint8 [N, H, W, 3] (HWC) -> INPUT float32 [N, 3, H, W], normalised. The maths is
``detector_ops.preprocess``, shipped beside this file in the version folder (the python backend
puts that folder on ``sys.path``), the same code the sample's generator scores the golden set with.

Replay (``orchestrate replay enable detector``): with the config parameter ``replay_dir`` set, 1
request in ``replay_every_n`` has its raw IMAGE recorded (production data) by ``replay_ring.py``,
shipped beside this file, without Triton's tracing; ``replay_dir`` empty or absent: off.
"""

import json
import os

import triton_python_backend_utils as pb_utils
from detector_ops import preprocess


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        self.replay = _replay_ring(config, args["model_repository"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                frames = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
                if self.replay is not None:
                    self.replay.offer({self.input: frames})  # never raises: a full disk is counted
                tensor = pb_utils.Tensor(self.output, preprocess(frames))
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            except Exception as exc:  # an error response, not a crashed stub
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def finalize(self):
        if self.replay is not None:
            self.replay.close()


def _replay_ring(config, folder):
    """The recorder the parameters ask for (``replay_dir`` relative to the repository folder's parent:
    ``folder`` is this step's), or None. Unusable settings turn recording off, never the step."""
    params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    where = params.get("replay_dir", "").strip()
    if not where:
        return None
    try:
        from replay_ring import RingWriter  # noqa: PLC0415 - only when recording: an older folder lacks it

        root = os.path.dirname(os.path.dirname(os.path.abspath(folder)))
        return RingWriter(os.path.join(root, where), int(params["replay_max_bytes"]),
                          int(params.get("replay_every_n", "1")))
    except Exception as exc:
        pb_utils.Logger.log_error(f"detector_pre: replay recording off: {exc}")
        return None
