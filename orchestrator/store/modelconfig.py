"""``config.pbtxt``: parsed with Triton's own protobuf schema, edited without losing comments.

The schema comes from tritonclient's ``model_config_pb2``; nothing here talks to a server.
Edits replace one top-level field in the text and then re-parse the result to prove that
nothing but that field changed; where that proof fails, the whole config is re-serialised.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from google.protobuf import text_format

from orchestrator.core.ensemble import FOLLOWS_SERVED, Ensemble, Step
from orchestrator.core.model import Contract, TensorSpec, VersionPolicy

CONFIG_FILE = "config.pbtxt"
CANDIDATE_SUFFIX = "__candidate"  # the orchestrator's own entries beside a model: never routes clients take

_REAL_SCHEMA = "tritonclient.grpc.model_config_pb2"
_PRIVATE_SCHEMA = "orchestrator.store._model_config_pb2"


def _load_schema() -> ModuleType:
    """tritonclient's ``model_config_pb2`` without importing ``tritonclient.grpc``.

    That package's ``__init__`` imports grpc and the whole gRPC client (~350 ms) while the schema
    needs only google.protobuf (~36 ms), so the generated file is loaded on its own. Loading it
    beside the real module is harmless: protobuf accepts an identical file added again and both
    names give the same message classes.
    """
    if _REAL_SCHEMA in sys.modules:
        return sys.modules[_REAL_SCHEMA]
    if _PRIVATE_SCHEMA in sys.modules:
        return sys.modules[_PRIVATE_SCHEMA]
    try:
        package = importlib.util.find_spec("tritonclient")
        locations = package.submodule_search_locations if package else None
        path = Path(next(iter(locations or ()))) / "grpc" / "model_config_pb2.py"
        spec = importlib.util.spec_from_file_location(_PRIVATE_SCHEMA, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise ImportError(f"no {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_PRIVATE_SCHEMA] = module
        spec.loader.exec_module(module)
        return module
    except Exception:  # an unusual install: the normal (slow) import, which raises what is really wrong
        sys.modules.pop(_PRIVATE_SCHEMA, None)
        from tritonclient.grpc import model_config_pb2  # noqa: PLC0415

        return model_config_pb2


mc = _load_schema()

ModelConfig = mc.ModelConfig


class ConfigError(ValueError):
    """config.pbtxt cannot be parsed; callers wrap it in their own error."""


def parse_config(text: str) -> ModelConfig:
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(str(exc)) from exc
    return config


def read_config(path: Path) -> tuple[str, ModelConfig]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return text, parse_config(text)


def version_policy(config: ModelConfig) -> VersionPolicy:
    if not config.HasField("version_policy"):
        return VersionPolicy("latest", latest=1)  # Triton's default
    which = config.version_policy.WhichOneof("policy_choice")
    if which == "specific":
        return VersionPolicy("specific", tuple(sorted(set(config.version_policy.specific.versions))))
    if which == "all":
        return VersionPolicy("all")
    return VersionPolicy("latest", latest=max(1, config.version_policy.latest.num_versions))


def to_json(config: ModelConfig) -> str:
    """The form ``load_model(config=...)`` takes."""
    # Imported here: only a load sends a config (~20 ms that `status` and `history` need not pay).
    from google.protobuf import json_format  # noqa: PLC0415

    return json_format.MessageToJson(config, preserving_proto_field_name=True, indent=None)


_DATATYPE_PREFIX = "TYPE_"


def _specs(tensors: object) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(t.name, mc.DataType.Name(t.data_type).removeprefix(_DATATYPE_PREFIX), tuple(t.dims))
        for t in tensors  # type: ignore[attr-defined]
    )


def contract(config: ModelConfig) -> Contract:
    return Contract(_specs(config.input), _specs(config.output))


def primary_file(config: ModelConfig) -> str:
    """The file Triton's backend opens in a version folder."""
    if config.default_model_filename:
        return config.default_model_filename
    if config.platform == "tensorrt_plan" or config.backend == "tensorrt":
        return "model.plan"
    if config.platform == "onnxruntime_onnx" or config.backend == "onnxruntime":
        return "model.onnx"
    if config.backend == "python":
        return "model.py"
    return "model"


# --- text edits -------------------------------------------------------------------------

def _skip_trivia(text: str, i: int) -> int:
    while i < len(text):
        if text[i].isspace():
            i += 1
        elif text[i] == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
        else:
            break
    return i


def _skip_string(text: str, i: int) -> int:
    quote = text[i]
    i += 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _skip_value(text: str, i: int) -> int:
    """Index just past the value starting at ``i`` (a block, a list, a string or a token)."""
    if text[i] in "{<[":
        depth = 0
        while i < len(text):
            ch = text[i]
            if ch in "\"'":
                i = _skip_string(text, i)
                continue
            if ch == "#":
                i = _skip_trivia(text, i)
                continue
            if ch in "{<[":
                depth += 1
            elif ch in "}>]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise ConfigError("unbalanced braces")
    if text[i] in "\"'":
        return _skip_string(text, i)
    while i < len(text) and not text[i].isspace() and text[i] not in "#{}<>[],;":
        i += 1
    return i


def _top_level_field(text: str, field: str) -> tuple[int, int] | None:
    """Span of the first top-level ``field: value`` in ``text``."""
    i = _skip_trivia(text, 0)
    while i < len(text):
        start = i
        while i < len(text) and (text[i].isalnum() or text[i] == "_"):
            i += 1
        name = text[start:i]
        if not name:
            raise ConfigError(f"unexpected {text[i]!r} at offset {i}")
        i = _skip_trivia(text, i)
        if i < len(text) and text[i] == ":":
            i = _skip_trivia(text, i + 1)
        end = _skip_value(text, i)
        if name == field:
            return start, end
        i = _skip_trivia(text, end)
        if i < len(text) and text[i] in ",;":
            i = _skip_trivia(text, i + 1)
    return None


def _replace_field(text: str, field: str, rendered: str) -> str:
    span = _top_level_field(text, field)
    if span is None:
        return text.rstrip("\n") + "\n" + rendered + "\n"
    return text[: span[0]] + rendered + text[span[1]:]


def _edited(text: str, config: ModelConfig, field: str, rendered: str) -> str:
    """``text`` with ``field`` replaced, proven to parse to exactly ``config``."""
    try:
        candidate = _replace_field(text, field, rendered)
        if parse_config(candidate) == config:
            return candidate
    except ConfigError:
        pass
    return text_format.MessageToString(config)


def with_specific_versions(text: str, versions: list[int] | tuple[int, ...]) -> tuple[str, ModelConfig]:
    """``text`` serving exactly ``versions``; returns the new text and its parsed config."""
    config = parse_config(text)
    config.version_policy.Clear()
    config.version_policy.specific.versions.extend(sorted(set(versions)))
    listed = ", ".join(str(v) for v in sorted(set(versions)))
    rendered = f"version_policy: {{ specific: {{ versions: [{listed}] }} }}"
    return _edited(text, config, "version_policy", rendered), config


def renamed(text: str, name: str) -> tuple[str, ModelConfig]:
    config = parse_config(text)
    config.name = name
    return _edited(text, config, "name", f'name: "{name}"'), config


# --- ensembles --------------------------------------------------------------------------

def is_ensemble(config: ModelConfig) -> bool:
    return config.platform == "ensemble"


def ensemble_of(config: ModelConfig) -> Ensemble | None:
    """The ensemble ``config`` describes, or None for any other model."""
    if not is_ensemble(config):
        return None
    steps = tuple(Step(s.model_name, int(s.model_version), tuple(sorted(s.input_map.items())),
                       tuple(sorted(s.output_map.items())))
                  for s in config.ensemble_scheduling.step)
    return Ensemble(config.name, steps, contract(config), config.max_batch_size)


def ensemble_candidate(text: str, model: str, entry: str, name: str) -> tuple[str, ModelConfig]:
    """The ensemble in ``text`` renamed ``name``, its steps of ``model`` sent to the candidate ``entry``."""
    config = parse_config(text)
    config.name = name
    for step in config.ensemble_scheduling.step:
        if step.model_name == model:
            step.model_name = entry
            step.model_version = FOLLOWS_SERVED
    return text_format.MessageToString(config), config


def read_ensembles(root: Path) -> list[Ensemble]:
    """Every ensemble in the repository at ``root`` (the orchestrator's candidate entries aside); a config that
    does not parse is skipped here: that model's own commands report it."""
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.endswith(CANDIDATE_SUFFIX) or not (folder / CONFIG_FILE).is_file():
            continue
        try:
            ensemble = ensemble_of(read_config(folder / CONFIG_FILE)[1])
        except ConfigError:
            continue
        if ensemble is not None:
            found.append(Ensemble(folder.name, ensemble.steps, ensemble.contract, ensemble.max_batch_size))
    return found
