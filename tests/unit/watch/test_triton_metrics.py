from orchestrator.triton.metrics import delta, parse

BEFORE = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="classifier",version="1"} 100
nv_inference_request_success{model="classifier",version="2"} 10
# HELP nv_inference_request_failure Number of failed inference requests
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="classifier",reason="BACKEND",version="2"} 1
nv_inference_request_failure{model="classifier",reason="REJECTED",version="2"} 50
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="classifier",version="2"} 10000
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.25
# HELP nv_cpu_memory_used_bytes CPU used memory in bytes
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 1048576
"""


def test_parse_reads_triton_counters_without_total_suffix_and_ignores_rejections():
    snapshot = parse(BEFORE)
    v2 = snapshot.versions[("classifier", 2)]
    assert (v2.success, v2.failure, v2.duration_us) == (10, 1, 10000)
    assert snapshot.cpu_utilization == 0.25 and snapshot.memory_bytes == 1048576
    assert snapshot.gpu_utilization is None


def test_delta_between_scrapes_and_counter_reset():
    backend = 'reason="BACKEND",version="2"}'
    after = parse(BEFORE.replace("} 10\n", "} 30\n").replace("} 10000", "} 50000")
                  .replace(f"{backend} 1", f"{backend} 4"))
    diff = delta(after, parse(BEFORE), "classifier", 2)
    assert diff is not None and (diff.success, diff.failure, diff.duration_us) == (20, 3, 40000)
    assert delta(parse(BEFORE), after, "classifier", 2) is None  # counters went down: Triton restarted
    assert delta(after, parse(BEFORE), "classifier", 9) is None
