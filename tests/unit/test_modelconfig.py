import pytest

from orchestrator.store.modelconfig import (
    ConfigError,
    VersionPolicy,
    contract,
    parse_config,
    primary_file,
    renamed,
    to_json,
    version_policy,
    with_specific_versions,
)

CONFIG = """# operator's comment survives edits
name: "classifier"  # trailing comment
backend: "python"
max_batch_size: 8
input [ { name: "IMAGE" data_type: TYPE_FP32 dims: [3, 16, 16] } ]
output [ { name: "LOGITS" data_type: TYPE_FP32 dims: [10] } ]
version_policy: { specific: { versions: [1] } }  # served
parameters { key: "note" value: { string_value: "braces } in { strings" } }
"""


def test_policy_edit_keeps_comments_and_every_other_field():
    text, config = with_specific_versions(CONFIG, [2, 1])
    assert "# operator's comment survives edits" in text
    assert "# served" in text
    assert version_policy(config) == VersionPolicy("specific", (1, 2))
    before = parse_config(CONFIG)
    before.version_policy.Clear()
    config.version_policy.Clear()
    assert before == config


def test_policy_added_when_config_has_none():
    text, config = with_specific_versions(CONFIG.replace("version_policy: { specific: { versions: [1] } }", ""), [3])
    assert version_policy(parse_config(text)) == VersionPolicy("specific", (3,))
    assert version_policy(config).versions == (3,)


def test_default_policy_is_latest_one():
    config = parse_config('name: "m" backend: "python"')
    policy = version_policy(config)
    assert policy == VersionPolicy("latest", latest=1)
    assert policy.resident([1, 3, 2]) == (3,)
    assert VersionPolicy("specific", (2, 5)).resident([1, 2, 3]) == (2,)
    assert VersionPolicy("all").resident([2, 1]) == (1, 2)


def test_rename_for_candidate_entry():
    text, config = renamed(CONFIG, "classifier__candidate")
    assert config.name == "classifier__candidate"
    assert 'name: "classifier__candidate"  # trailing comment' in text


def test_contract_and_json_override():
    config = parse_config(CONFIG)
    spec = contract(config)
    assert [(t.name, t.datatype, t.dims) for t in spec.inputs] == [("IMAGE", "FP32", (3, 16, 16))]
    assert spec.outputs[0].describe() == "LOGITS:FP32[10]"
    assert '"versions": ["1"]' in to_json(config)


def test_primary_file_by_backend():
    assert primary_file(parse_config('backend: "python"')) == "model.py"
    assert primary_file(parse_config('platform: "tensorrt_plan"')) == "model.plan"
    assert primary_file(parse_config('platform: "onnxruntime_onnx"')) == "model.onnx"
    assert primary_file(parse_config('backend: "python" default_model_filename: "run.py"')) == "run.py"


def test_invalid_config_is_a_config_error():
    with pytest.raises(ConfigError):
        parse_config("name: classifier {{{")
    with pytest.raises(ConfigError):
        with_specific_versions("version_policy: { specific: { versions: [1] }", [2])
