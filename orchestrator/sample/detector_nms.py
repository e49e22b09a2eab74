"""Triton python-backend step ``detector_nms``: the detector's dense head in, detections out.

RAW float32 [N, cells, 5 + classes] -> BOXES [N, K, 4] (x1, y1, x2, y2 pixels), SCORES [N, K],
CLASSES [N, K] (int32), COUNT [N, 1] (int32); rows past COUNT are zeros. The thresholds are the
config's ``parameters`` (score_threshold, iou_threshold), K is the BOXES dims. The maths is
``detector_ops.postprocess``, shipped beside this file in the version folder: the code the
sample's generator scores the golden set with. A NaN score is kept, so a NaN-emitting network
shows NaN here instead of looking like "no detections".
"""

import json

import triton_python_backend_utils as pb_utils
from detector_ops import IOU_THRESHOLD, SCORE_THRESHOLD, postprocess


def _parameter(config, name, default):
    value = config.get("parameters", {}).get(name, {}).get("string_value")
    return float(value) if value not in (None, "") else default


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        boxes = next(tensor for tensor in config["output"] if tensor["name"] == "BOXES")
        self.k = int(boxes["dims"][0])
        self.score_threshold = _parameter(config, "score_threshold", SCORE_THRESHOLD)
        self.iou_threshold = _parameter(config, "iou_threshold", IOU_THRESHOLD)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
                found = postprocess(raw, self.score_threshold, self.iou_threshold, self.k)
                tensors = [pb_utils.Tensor(name, found[name]) for name in self.outputs]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # an error response, not a crashed stub
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
