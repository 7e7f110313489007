"""Tests for transformer_graph.config: loading, validation messages, overrides, round trip."""
from dataclasses import fields, is_dataclass

import pytest
import yaml

from transformer_graph.config import (Config, ConfigError, DataConfig, ModelConfig, OptimConfig,
                                      StructureConfig, config_from_dict, config_to_dict, describe,
                                      load_config, save_config)


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- loading and defaults

def test_empty_mapping_and_empty_file_give_defaults(tmp_path):
    assert config_from_dict({}) == Config()
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "# only a comment\n")) == Config()


def test_missing_sections_use_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  layers: 2\n  d_model: 64\n  heads: 4\n"))
    assert (cfg.model.layers, cfg.model.d_model, cfg.model.heads) == (2, 64, 4)
    assert cfg.model.d_ff == ModelConfig().d_ff
    assert cfg.data == DataConfig() and cfg.optim == OptimConfig()
    assert cfg.model.structure == StructureConfig()


def test_empty_section_is_defaults(tmp_path):
    # `model:` with all its keys commented out loads as None
    assert load_config(write(tmp_path, "model:\n#  layers: 2\n")) == Config()


def test_defaults_match_spec():
    cfg = Config()
    assert cfg.model.kind == "standard" and cfg.model.layers == 6 and cfg.model.decoder_layers is None
    assert cfg.model.structure.enc == "complete" and cfg.model.structure.dec == "causal"
    assert cfg.optim.betas == [0.9, 0.98] and cfg.optim.eps == 1e-9 and cfg.optim.warmup == 400
    assert cfg.data.task == "copy" and cfg.data.max_tokens is None and cfg.data.test_prefix == "test_2016_flickr"
    assert cfg.train.device == "cpu" and cfg.eval.beam == 1 and cfg.viz.example is None
    assert Config().optim.betas is not Config().optim.betas  # no shared mutable default


def test_values_are_typed_and_int_becomes_float(tmp_path):
    cfg = load_config(write(tmp_path, "optim:\n  factor: 2\n  betas: [0, 0.99]\n  eps: 1e-8\n"
                                      "model:\n  attn_dropout: 0\n  tie_generator: true\n"))
    assert cfg.optim.factor == 2.0 and isinstance(cfg.optim.factor, float)
    assert cfg.optim.betas == [0.0, 0.99] and all(isinstance(b, float) for b in cfg.optim.betas)
    # PyYAML reads `1e-8` (no dot) as a string; float fields accept that spelling
    assert cfg.optim.eps == 1e-8
    assert cfg.model.attn_dropout == 0.0 and cfg.model.tie_generator is True


def test_nested_structure_section(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  structure:\n    enc: window\n    window: 3\n"))
    assert cfg.model.structure == StructureConfig(enc="window", window=3)


def test_config_from_dict_does_not_modify_its_argument():
    d = {"model": {"layers": 2}}
    config_from_dict(d, overrides=["model.heads=4", "data.task=sort"])
    assert d == {"model": {"layers": 2}}


# --------------------------------------------------------------------------- file errors

def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = error_of(load_config, path)
    assert str(path) in msg and "not found" in msg


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "model:\n  layers: 2\n  heads: [4\ndata:\n  task: copy\n", name="broken.yaml")
    msg = error_of(load_config, path)
    assert str(path) in msg and "invalid YAML" in msg
    line = int(msg.split("line ")[1].split(",")[0])
    assert 3 <= line <= 5  # PyYAML reports where it noticed the unclosed bracket


def test_yaml_syntax_error_exact_line(tmp_path):
    path = write(tmp_path, "model:\n  layers: 2\n   heads: 4\n", name="bad.yaml")
    assert "line 3" in error_of(load_config, path)


@pytest.mark.parametrize("text, got", [("- 1\n- 2\n", "[1, 2]"), ("just a string\n", "'just a string'")])
def test_top_level_must_be_a_mapping(tmp_path, text, got):
    path = write(tmp_path, text)
    msg = error_of(load_config, path)
    assert msg.startswith(f"{path}: expected a mapping of sections") and msg.endswith(f"got {got}")
    assert "model" in msg  # lists the valid sections


def test_directory_is_not_a_config(tmp_path):
    assert str(tmp_path) in error_of(load_config, tmp_path)


# --------------------------------------------------------------------------- value errors

def test_error_message_format(tmp_path):
    path = write(tmp_path, "optim:\n  warmup: -5\n", name="copy.yaml")
    assert error_of(load_config, path) == f"{path}: optim.warmup: expected a positive integer, got -5"


def test_unknown_key_suggests_closest(tmp_path):
    path = write(tmp_path, "model:\n  layres: 2\n", name="x.yaml")
    assert error_of(load_config, path) == f"{path}: model.layres: unknown key; did you mean 'layers'?"


def test_unknown_key_without_close_match_lists_keys():
    msg = error_of(config_from_dict, {"optim": {"zzzzzz": 1}}, "c.yaml")
    assert msg.startswith("c.yaml: optim.zzzzzz: unknown key; expected one of:") and "warmup" in msg


def test_unknown_nested_key():
    msg = error_of(config_from_dict, {"model": {"structure": {"windw": 3}}}, "c.yaml")
    assert msg == "c.yaml: model.structure.windw: unknown key; did you mean 'window'?"


def test_unknown_section_suggests_closest():
    msg = error_of(config_from_dict, {"modle": {"layers": 2}}, "c.yaml")
    assert msg == "c.yaml: modle: unknown section; did you mean 'model'?"


@pytest.mark.parametrize("section, value", [("model", 5), ("data", [1, 2]), ("optim", "fast")])
def test_section_must_be_a_mapping(section, value):
    msg = error_of(config_from_dict, {section: value}, "c.yaml")
    assert msg == f"c.yaml: {section}: expected a mapping of keys to values, got {value!r}"


def test_nested_section_must_be_a_mapping():
    msg = error_of(config_from_dict, {"model": {"structure": "window"}}, "c.yaml")
    assert msg == "c.yaml: model.structure: expected a mapping of keys to values, got 'window'"


@pytest.mark.parametrize("section, key, value, expected", [
    ("model", "layers", "abc", "an integer"),
    ("model", "layers", True, "an integer"),        # bool is not an int
    ("model", "layers", 2.0, "an integer"),
    ("model", "dropout", False, "a number"),         # ...nor a number
    ("model", "dropout", "high", "a number"),
    ("model", "dropout", float("nan"), "a number"),
    ("model", "norm_first", 1, "a boolean"),
    ("model", "norm_first", "yes please", "a boolean"),
    ("data", "alphabet", 123, "a string"),
    ("model", "decoder_layers", "two", "an integer or null"),
    ("model", "tie_generator", 0, "a boolean (true/false) or null"),
    ("data", "path", 7, "a string or null"),
    ("optim", "betas", 0.9, "a list of 2 numbers"),
    ("optim", "betas", [0.9, 0.98, 0.999], "a list of 2 numbers"),
])
def test_wrong_type(section, key, value, expected):
    msg = error_of(config_from_dict, {section: {key: value}}, "c.yaml")
    assert msg.startswith(f"c.yaml: {section}.{key}: expected {expected}")
    assert msg.endswith(f", got {value!r}")


@pytest.mark.parametrize("section, key, value, expected", [
    ("model", "layers", 0, "a positive integer"),
    ("model", "decoder_layers", 0, "a positive integer or null"),
    ("model", "dropout", 1.0, "a number in [0, 1)"),
    ("model", "dropout", -0.1, "a number in [0, 1)"),
    ("model", "attn_dropout", 1, "a number in [0, 1) or null"),
    ("model", "act_threshold", 0, "a number in (0, 1]"),
    ("model", "act_threshold", 1.5, "a number in (0, 1]"),
    ("model", "ponder_weight", -1, "a non-negative number"),
    ("model", "structure", {"window": -1}, "a non-negative integer"),
    ("optim", "factor", 0, "a positive number"),
    ("optim", "eps", 0.0, "a positive number"),
    ("optim", "label_smoothing", 1, "a number in [0, 1)"),
    ("optim", "clip_grad", 0, "a positive number or null"),
    ("train", "max_time", -3, "a positive number or null"),
    ("train", "threads", 0, "a positive integer or null"),
    ("data", "max_tokens", 0, "a positive integer or null"),
    ("eval", "max_len_b", -1, "a non-negative integer"),
])
def test_out_of_range(section, key, value, expected):
    msg = error_of(config_from_dict, {section: {key: value}}, "c.yaml")
    if isinstance(value, dict):
        (key, value), = [(f"{key}.{k}", v) for k, v in value.items()]
    assert msg == f"c.yaml: {section}.{key}: expected {expected}, got {value!r}"


def test_list_element_out_of_range():
    msg = error_of(config_from_dict, {"optim": {"betas": [0.9, 1.5]}}, "c.yaml")
    assert msg == "c.yaml: optim.betas[1]: expected a number in [0, 1), got 1.5"
    msg = error_of(config_from_dict, {"optim": {"betas": [0.9, "x"]}}, "c.yaml")
    assert msg == "c.yaml: optim.betas[1]: expected a number, got 'x'"


@pytest.mark.parametrize("section, key, value, choices", [
    ("model", "kind", "recurrent", "'standard', 'universal'"),
    ("model", "aggregator", "sum", "'attention', 'mean', 'gat', 'sage'"),
    ("data", "task", "reverse", "'copy', 'sort', 'parallel', 'multi30k', 'pattern', 'cluster', 'karate', 'planetoid'"),
    ("data", "long_pairs", 3, "'skip', 'truncate'"),
    ("train", "device", "gpu", "'cpu', 'cuda', 'auto'"),
])
def test_invalid_choice_lists_choices(section, key, value, choices):
    msg = error_of(config_from_dict, {section: {key: value}}, "c.yaml")
    assert msg == f"c.yaml: {section}.{key}: expected one of {choices}, got {value!r}"


def test_null_accepted_only_for_optional_fields():
    cfg = config_from_dict({"model": {"decoder_layers": None, "attn_dropout": None},
                            "optim": {"clip_grad": None}})
    assert cfg.model.decoder_layers is None and cfg.optim.clip_grad is None
    assert error_of(config_from_dict, {"model": {"layers": None}}, "c.yaml") == \
        "c.yaml: model.layers: expected an integer, got None"


def test_heads_must_divide_d_model():
    msg = error_of(config_from_dict, {"model": {"d_model": 512, "heads": 7}}, "c.yaml")
    assert msg == "c.yaml: model.heads: expected a divisor of model.d_model (512), got 7"


def test_parallel_requires_path():
    msg = error_of(config_from_dict, {"data": {"task": "parallel"}}, "c.yaml")
    assert msg.startswith("c.yaml: data.path: required for task 'parallel'")
    cfg = config_from_dict({"data": {"task": "parallel", "path": "data/iwslt"}})
    assert cfg.data.path == "data/iwslt"


# --------------------------------------------------------------------------- overrides

def test_overrides_are_parsed_as_yaml(tmp_path):
    path = write(tmp_path, "model:\n  layers: 4\n  attn_dropout: 0.2\n")
    cfg = load_config(path, ["model.layers=2", "optim.betas=[0.9,0.99]", "model.attn_dropout=null",
                             "model.structure.enc=window", "train.bf16=true", "optim.eps=1e-6",
                             "data.path=some/dir"])
    assert cfg.model.layers == 2 and cfg.optim.betas == [0.9, 0.99] and cfg.model.attn_dropout is None
    assert cfg.model.structure.enc == "window" and cfg.model.structure.dec == "causal"
    assert cfg.train.bf16 is True and cfg.optim.eps == 1e-6 and cfg.data.path == "some/dir"


def test_later_override_wins_and_whole_section_override():
    cfg = config_from_dict({}, overrides=["model.layers=2", "model.layers=3"])
    assert cfg.model.layers == 3
    cfg = config_from_dict({"model": {"structure": {"window": 5}}},
                           overrides=["model.structure={enc: window, window: 2}"])
    assert cfg.model.structure == StructureConfig(enc="window", window=2)


def test_override_value_errors_name_the_override(tmp_path):
    path = write(tmp_path, "model:\n  layers: 4\n")
    assert error_of(load_config, path, ["model.layers=abc"]) == \
        "--set model.layers=abc: model.layers: expected an integer, got 'abc'"
    assert error_of(load_config, path, ["optim.warmup=-5"]) == \
        "--set optim.warmup=-5: optim.warmup: expected a positive integer, got -5"
    assert error_of(config_from_dict, {}, overrides=["optim.betas=[0.9,2]"]) == \
        "--set optim.betas=[0.9,2]: optim.betas[1]: expected a number in [0, 1), got 2"


def test_file_errors_still_name_the_file_when_overrides_given(tmp_path):
    path = write(tmp_path, "model:\n  layers: abc\n")
    assert error_of(load_config, path, ["model.heads=4"]) == \
        f"{path}: model.layers: expected an integer, got 'abc'"
    # ...unless the override replaces the bad value
    assert load_config(path, ["model.layers=2"]).model.layers == 2


def test_override_unknown_key_and_section():
    assert error_of(config_from_dict, {}, overrides=["model.layres=2"]) == \
        "--set model.layres=2: model.layres: unknown key; did you mean 'layers'?"
    assert error_of(config_from_dict, {}, overrides=["optm.warmup=2"]) == \
        "--set optm.warmup=2: optm: unknown section; did you mean 'optim'?"
    assert error_of(config_from_dict, {}, overrides=["model.structure.encc=window"]) == \
        "--set model.structure.encc=window: model.structure.encc: unknown key; did you mean 'enc'?"
    msg = error_of(config_from_dict, {}, overrides=["model.layers.x=2"])
    assert msg.startswith("--set model.layers.x=2: model.layers.x: unknown key")


@pytest.mark.parametrize("item", ["model.layers", "=3", "  "])
def test_override_without_equals_is_a_clear_error(item):
    msg = error_of(config_from_dict, {}, overrides=[item])
    assert msg.startswith(f"--set {item}: expected dotted.key=value")


def test_override_with_bad_yaml():
    msg = error_of(config_from_dict, {}, overrides=["optim.betas=[0.9"])
    assert msg.startswith("--set optim.betas=[0.9: optim.betas: expected a YAML value")


def test_cross_field_error_names_the_override_that_caused_it():
    assert error_of(config_from_dict, {"model": {"d_model": 512}}, "c.yaml", ["model.heads=7"]) == \
        "--set model.heads=7: model.heads: expected a divisor of model.d_model (512), got 7"
    assert error_of(config_from_dict, {"model": {"heads": 8}}, "c.yaml", ["model.d_model=100"]) == \
        "--set model.d_model=100: model.heads: expected a divisor of model.d_model (100), got 8"
    # the file alone is invalid but the override fixes it
    cfg = config_from_dict({"model": {"heads": 7}}, "c.yaml", ["model.heads=8"])
    assert cfg.model.heads == 8
    msg = error_of(config_from_dict, {}, "c.yaml", ["data.task=parallel"])
    assert msg.startswith("--set data.task=parallel: data.path: required for task 'parallel'")


def test_override_into_section_that_is_not_a_mapping():
    msg = error_of(config_from_dict, {"model": 5}, "c.yaml", ["model.layers=2"])
    assert msg == "c.yaml: model: expected a mapping of keys to values, got 5"


# --------------------------------------------------------------------------- round trip

def test_round_trip_defaults(tmp_path):
    save_config(Config(), tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == Config()


def test_round_trip_non_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  kind: universal\n  d_model: 64\n  heads: 4\n"
                                      "  tie_generator: false\n  structure: {enc: dilated, dilation: 3}\n"
                                      "data: {task: parallel, path: /data/de-en, max_tokens: 4096}\n"),
                      ["optim.betas=[0.8,0.9]", "optim.eps=1e-7", "train.max_time=3600", "viz.example=3"])
    out = tmp_path / "saved.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg
    saved = yaml.safe_load(out.read_text())
    assert list(saved) == ["model", "data", "optim", "train", "eval", "viz"]  # schema order, not sorted
    assert saved == config_to_dict(cfg)
    assert config_to_dict(cfg)["model"]["structure"]["dilation"] == 3


# --------------------------------------------------------------------------- describe

def leaf_keys(cls, prefix=""):
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if is_dataclass(f.default_factory if callable(f.default_factory) else None):
            yield from leaf_keys(f.default_factory, key)
        else:
            yield key, f


def test_describe_mentions_every_field():
    text = describe()
    keys = list(leaf_keys(Config))
    assert len(keys) > 60
    for key, f in keys:
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(key + " (")), None)
        assert line is not None, key
        assert f.metadata["doc"] in line
    assert "model.layers (int, default 6): " in text
    assert "model.attn_dropout (float or null, default null): " in text
    assert "optim.betas (list[float], default [0.9, 0.98]): " in text


def test_every_field_has_a_doc():
    for _, f in leaf_keys(Config):
        assert f.metadata.get("doc"), f.name
