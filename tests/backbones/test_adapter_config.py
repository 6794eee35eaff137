"""A peft adapter config as plain data: round trips, and what is refused."""

import json
import sys
import warnings

import pytest

peft = pytest.importorskip("peft")

from sktransfer.backbones.adapter_config import (  # noqa: E402
    ALLOWLISTS, config_from_state, config_state)

ROUND_TRIPS = {
    "lora": lambda: peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1,
                                    target_modules=["qkv", "proj"], bias="lora_only"),
    "lora_one_name": lambda: peft.LoraConfig(target_modules="attn.qkv",
                                             init_lora_weights="gaussian"),
    "dora": lambda: peft.LoraConfig(r=8, use_dora=True, target_modules=["query", "value"],
                                    exclude_modules=["head"]),
    "rslora": lambda: peft.LoraConfig(r=16, lora_alpha=8.5, use_rslora=True,
                                      target_modules="all-linear", init_lora_weights=False),
    "rank_pattern": lambda: peft.LoraConfig(
        r=8, target_modules=["fc1", "fc2"], layers_to_transform=[0, 2], layers_pattern="blocks",
        rank_pattern={"blocks.0.fc1": 16}, alpha_pattern={"fc2": 32.0},
        init_lora_weights="orthogonal"),
    "ia3": lambda: peft.IA3Config(target_modules=["k", "v", "fc2"], feedforward_modules=["fc2"],
                                  fan_in_fan_out=True),
    "loha": lambda: peft.LoHaConfig(r=4, alpha=8, rank_dropout=0.2, module_dropout=0.1,
                                    target_modules=["qkv"], use_effective_conv2d=True,
                                    rank_pattern={"qkv": 2}),
    "lokr": lambda: peft.LoKrConfig(r=4, alpha=4, decompose_both=True, decompose_factor=4,
                                    target_modules=["qkv"], init_weights="lycoris",
                                    layers_to_transform=3, layers_pattern=["blocks"]),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_a_config_round_trips_through_plain_json(name):
    config = ROUND_TRIPS[name]()
    state = config_state(config)
    assert json.loads(json.dumps(state, allow_nan=False)) == state
    assert set(state["fields"]) == set(ALLOWLISTS[state["peft_type"]])
    rebuilt = config_from_state(json.loads(json.dumps(state)))
    assert type(rebuilt) is type(config)
    assert config_state(rebuilt) == state
    for field in state["fields"]:
        assert getattr(rebuilt, field) == getattr(config, field), field


def test_the_state_shares_nothing_mutable_with_the_config():
    config = peft.LoraConfig(rank_pattern={"a": 2}, layers_to_transform=[1],
                             target_modules=["a"])
    state = config_state(config)
    state["fields"]["rank_pattern"]["b"] = 3
    state["fields"]["layers_to_transform"].append(5)
    assert config.rank_pattern == {"a": 2} and config.layers_to_transform == [1]


def test_module_names_set_as_a_list_are_stored_sorted():
    config = peft.LoraConfig()
    config.target_modules = ["v", "q", "v"]
    state = config_state(config)
    assert state["fields"]["target_modules"] == ["q", "v"]
    assert config_state(config_from_state(state)) == state


def test_missing_fields_take_peft_defaults():
    config = config_from_state({"peft_type": "LOHA", "fields": {"r": 2}})
    assert config.r == 2 and config.alpha == peft.LoHaConfig().alpha


@pytest.mark.parametrize("config", [
    lambda: peft.PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    lambda: peft.AdaLoraConfig(total_step=10),
    lambda: type("MyLora", (peft.LoraConfig,), {})(),
], ids=["prompt_tuning", "adalora", "lora_subclass"])
def test_an_unsupported_type_is_refused(config):
    with pytest.raises(ValueError, match="cannot be stored"):
        config_state(config())


@pytest.mark.parametrize("field, kwargs", [
    ("megatron_core", {"megatron_core": "os"}),  # peft imports it by name
    ("megatron_config", {"megatron_config": {"tensor_model_parallel_size": 2}}),
    ("modules_to_save", {"modules_to_save": ["classifier"]}),
    ("layer_replication", {"layer_replication": [(0, 2)]}),
    ("target_parameters", {"target_parameters": ["experts.w"]}),
    ("trainable_token_indices", {"trainable_token_indices": [1, 2]}),
    ("task_type", {"task_type": "SEQ_CLS"}),
])
def test_a_field_outside_the_allowlist_is_refused(field, kwargs):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = peft.LoraConfig(**kwargs)
    except ImportError:  # loftq needs scipy
        pytest.skip("peft refuses the config itself here")
    with pytest.raises(ValueError, match=f"'{field}'.*cannot be stored"):
        config_state(config)


def test_a_loftq_config_is_refused():
    config = peft.LoraConfig()
    config.loftq_config = {"loftq_bits": 4}
    with pytest.raises(ValueError, match="'loftq_config'.*cannot be stored"):
        config_state(config)


def test_other_types_refuse_their_own_extra_fields():
    with pytest.raises(ValueError, match="'modules_to_save'"):
        config_state(peft.IA3Config(modules_to_save=["head"]))
    with pytest.raises(ValueError, match="'modules_to_save'"):
        config_state(peft.LoKrConfig(modules_to_save=["head"]))


@pytest.mark.parametrize("init", ["eva", "corda", "pissa", "pissa_niter_4", "olora", "mica"])
def test_data_driven_inits_are_refused(init):
    config = peft.LoraConfig()
    config.init_lora_weights = init
    with pytest.raises(ValueError, match="'init_lora_weights'.*cannot be stored"):
        config_state(config)
    with pytest.raises(ValueError, match="'init_lora_weights'"):
        config_from_state({"peft_type": "LORA", "fields": {"init_lora_weights": init}})


def test_a_planted_attribute_or_callable_is_refused():
    config = peft.LoraConfig()
    config.hook = print
    with pytest.raises(ValueError, match="'hook'"):
        config_state(config)
    config = peft.LoraConfig()
    config.r = lambda: 8
    with pytest.raises(ValueError, match="'r'"):
        config_state(config)


def test_bookkeeping_peft_writes_is_not_stored():
    config = peft.LoraConfig(r=4)
    config.base_model_name_or_path = "/home/me/model"
    state = config_state(config)
    assert "base_model_name_or_path" not in state["fields"]
    assert "/home/me/model" not in json.dumps(state)


def _lora(**fields):
    return {"peft_type": "LORA", "fields": fields}


@pytest.mark.parametrize("state, named", [
    (_lora(megatron_core="os"), "megatron_core"),
    (_lora(loftq_config={"loftq_bits": 4}), "loftq_config"),
    (_lora(modules_to_save=["head"]), "modules_to_save"),
    (_lora(base_model_name_or_path="/etc"), "base_model_name_or_path"),
    (_lora(unknown_key=1), "unknown_key"),
    (_lora(r=[8]), "'r'"),
    (_lora(r=True), "'r'"),
    (_lora(r=8.0), "'r'"),
    (_lora(r=0), "'r'"),
    (_lora(r=10 ** 9), "'r'"),
    (_lora(lora_dropout=float("nan")), "lora_dropout"),
    (_lora(lora_dropout=2.0), "lora_dropout"),
    (_lora(use_dora=1), "use_dora"),
    (_lora(bias="everything"), "'bias'"),
    (_lora(target_modules="q" * 10_000), "target_modules"),
    (_lora(target_modules=["q"] * 1001), "target_modules"),
    (_lora(target_modules=["q", 3]), "target_modules"),
    (_lora(target_modules=[["q"]]), "target_modules"),
    (_lora(target_modules=("q",)), "target_modules"),
    (_lora(target_modules={"q": 1}), "target_modules"),
    (_lora(target_modules="(unclosed"), "target_modules"),
    # peft reads names as regular expressions: none that could backtrack is stored
    (_lora(target_modules="(a|a)*b"), "target_modules"),
    (_lora(target_modules=["(a|a)*b"]), "target_modules"),
    (_lora(exclude_modules=".*x"), "exclude_modules"),
    (_lora(rank_pattern={"(a|a)*b": 8}), "rank_pattern"),
    (_lora(rank_pattern={f"layer{i}": 8 for i in range(65)}), "rank_pattern"),
    (_lora(layers_pattern="(?P<idx>a)"), "layers_pattern"),
    (_lora(rank_pattern={1: 8}), "rank_pattern"),
    (_lora(rank_pattern={"a": "8"}), "rank_pattern"),
    (_lora(rank_pattern={"a": {"b": 8}}), "rank_pattern"),
    (_lora(alpha_pattern={"a": [1.0]}), "alpha_pattern"),
    (_lora(layers_to_transform=[0, -1]), "layers_to_transform"),
    (_lora(init_lora_weights=1), "init_lora_weights"),
    ({"peft_type": "os.system", "fields": {}}, "os.system"),
    ({"peft_type": "ADALORA", "fields": {}}, "ADALORA"),
    ({"peft_type": ["LORA"], "fields": {}}, "LORA"),
    ({"peft_type": "LORA", "fields": [("r", 8)]}, "fields"),
    ({"peft_type": "LORA", "fields": {}, "extra": 1}, "extra"),
    ({"peft_type": "LORA"}, "fields"),
    ([("peft_type", "LORA")], "dict"),
    ({"peft_type": "IA3", "fields": {"r": 8}}, "'r'"),
    ({"peft_type": "LOKR", "fields": {"decompose_factor": 0}}, "decompose_factor"),
    ({"peft_type": "LOHA", "fields": {"init_weights": "lycoris"}}, "init_weights"),
])
def test_a_crafted_state_is_refused_naming_what_is_wrong(state, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        config_from_state(state)


def test_a_str_subclass_is_not_a_str():
    class Sneaky(str):
        pass

    with pytest.raises(ValueError, match="type 'LORA' cannot be loaded"):
        config_from_state({"peft_type": Sneaky("LORA"), "fields": {}})
    with pytest.raises(ValueError, match="Sneaky|field"):
        config_from_state(_lora(**{Sneaky("r"): 8}))
    with pytest.raises(ValueError, match="'bias'"):
        config_from_state(_lora(bias=Sneaky("none")))


def test_an_inconsistent_state_is_refused_as_a_value_error():
    with pytest.raises(ValueError, match="refused by peft"):
        config_from_state(_lora(target_modules="q", layers_to_transform=[1]))


def test_loading_a_crafted_state_imports_nothing(tmp_path, monkeypatch):
    name = "skt_planted_payload_module"
    sentinel = tmp_path / "ran"
    (tmp_path / f"{name}.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert name not in sys.modules
    refused = [
        {"peft_type": name, "fields": {}},
        {"peft_type": f"{name}.Config", "fields": {}},
        _lora(megatron_core=name),
        _lora(megatron_config={"module": name}),
        _lora(runtime_config=name),
        _lora(init_lora_weights=name),
    ]
    for state in refused:
        with pytest.raises(ValueError):
            config_from_state(state)
    accepted = config_from_state(_lora(target_modules=[name], layers_pattern=name,
                                       layers_to_transform=[0], rank_pattern={name: 4}))
    assert accepted.target_modules == {name}
    assert name not in sys.modules and not sentinel.exists()


def test_a_missing_peft_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r'pip install "sktransfer\[peft\]"'):
        config_from_state(_lora(r=4))
    with pytest.raises(ImportError, match=r'pip install "sktransfer\[peft\]"'):
        config_state(object())
