"""A peft adapter's config as plain data, for model files and pickles.

A saved model stores its adapter's config as a small JSON-safe dict,
``{"peft_type": "LORA", "fields": {...}}`` (:func:`config_state`), and a
loaded one rebuilds it from that dict (:func:`config_from_state`). The dict
holds only an allowlist of fields per supported type (:data:`ALLOWLISTS`):
the ones that describe an adapter's shape and its initialization, each a
plain value (bool, int, float, str, None, a list of str or int, a dict of
str to int or float).

Everything else is refused, on both sides, with a :class:`ValueError` that
names the field: fields that make peft import modules or read files by name
(LoRA's ``megatron_core``, ``megatron_config``, ``loftq_config``), that carry
objects or callables (``runtime_config``, the sub-configs of LoRA variants),
or that make more than an adapter (``modules_to_save``,
``trainable_token_indices``, ``target_parameters``, ``layer_replication``),
and the data-driven initializations (``"loftq"``, ``"eva"``, ``"corda"``,
``"pissa"``, ``"olora"``, ``"mica"``...), which need data or rewrite the
base weights. A live config may set such a field only to its default.

Loading never imports anything by name: the config class comes from a fixed
dict keyed by the stored ``peft_type``, and every stored value is checked by
its exact type and size before peft sees it. peft is optional
(``pip install "sktransfer[peft]"``) and imported only inside the functions.

Examples
--------
>>> from peft import LoraConfig
>>> state = config_state(LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"]))
>>> state["peft_type"], state["fields"]["r"], state["fields"]["target_modules"]
('LORA', 4, ['qkv'])
>>> config = config_from_state(state)
>>> type(config).__name__, config.r, config.target_modules
('LoraConfig', 4, {'qkv'})
"""

import dataclasses
import math
import re

__all__ = ["ALLOWLISTS", "config_from_state", "config_state"]

#: Bounds on stored values: a file cannot ask for a huge adapter or payload.
MAX_RANK = 4096
MAX_ITEMS = 1000
MAX_CHARS = 200
MAX_LAYER = 100_000
MAX_ALPHA = 1e6
#: Entries of ``rank_pattern`` / ``alpha_pattern`` (peft matches each against
#: every layer's name).
MAX_PATTERNS = 64

#: What a stored layer name may hold. peft reads these names as regular
#: expressions; without groups, alternations or repeats (a ``.`` matches one
#: character) matching takes linear time, so a file cannot make loading
#: backtrack for hours. Layer names are letters, digits, ``_`` and ``.``.
NAME = re.compile(r"[A-Za-z0-9_.]+")
#: peft's own words for a set of layers (no pattern is matched for them).
KEYWORDS = frozenset({"all-linear"})

#: Fields peft fills in about the model a config was last applied to (or its
#: own version): neither stored nor refused, and refused in a stored state.
UNSTORED = frozenset({"peft_version", "base_model_name_or_path", "revision"})

_INSTALL = 'adapters need peft: pip install "sktransfer[peft]"'


class _Bad(Exception):
    """A value that does not fit its field (the message says why)."""


# -- checks of one value: each returns a fresh plain copy or raises _Bad --------------------

def _bool(value):
    if type(value) is not bool:
        raise _Bad("expected True or False")
    return value


def _int_in(low, high, *, skip=()):
    def check(value):
        if type(value) is not int or not low <= value <= high or value in skip:
            raise _Bad(f"expected an int from {low} to {high}"
                       + (f", not {list(skip)}" if skip else ""))
        return value
    return check


def _number_in(low, high):
    def check(value):
        if (type(value) not in (int, float) or not math.isfinite(value)
                or not low <= value <= high):
            raise _Bad(f"expected a number from {low} to {high}")
        return value
    return check


def _choice(*choices):
    def check(value):
        if not any(type(value) is type(c) and value == c for c in choices):
            raise _Bad(f"expected one of {list(choices)}")
        return value
    return check


def _text(*, regex=False):
    """A str; ``regex=True``: a layer name that peft may read as a pattern (see :data:`NAME`)."""
    def check(value):
        if type(value) is not str or len(value) > MAX_CHARS:
            raise _Bad(f"expected a str of at most {MAX_CHARS} characters")
        if regex and value not in KEYWORDS and not NAME.fullmatch(value):
            raise _Bad("expected a layer name (letters, digits, '_' and '.'); regular "
                       "expressions are not stored: give the layer names as a list")
        return value
    return check


def _list_of(item):
    def check(value):
        if type(value) is not list or len(value) > MAX_ITEMS:
            raise _Bad(f"expected a list of at most {MAX_ITEMS} items")
        out = []
        for i, element in enumerate(value):
            try:
                out.append(item(element))
            except _Bad as bad:
                raise _Bad(f"item {i}: {bad}") from None
        return out
    return check


def _patterns(item):
    """A dict of regular expressions (module names) to values."""
    key_check = _text(regex=True)

    def check(value):
        if type(value) is not dict or len(value) > MAX_PATTERNS:
            raise _Bad(f"expected a dict of at most {MAX_PATTERNS} entries")
        out = {}
        for key, element in value.items():
            try:
                out[key_check(key)] = item(element)
            except _Bad as bad:
                raise _Bad(f"entry {_short(key)}: {bad}") from None
        return out
    return check


def _either(*checks):
    def check(value):
        reasons = []
        for one in checks:
            try:
                return one(value)
            except _Bad as bad:
                reasons.append(str(bad))
        raise _Bad(" or ".join(reasons))
    return check


def _optional(check):
    return _either(_choice(None), check)


_RANK = _int_in(1, MAX_RANK)
_ALPHA = _number_in(-MAX_ALPHA, MAX_ALPHA)
_PROBABILITY = _number_in(0, 1)
#: Module names: a list (exact or suffix matches) or one name (see :data:`NAME`).
_MODULES = _optional(_either(_text(regex=True), _list_of(_text(regex=True))))
_LAYERS = _optional(_either(_int_in(0, MAX_LAYER), _list_of(_int_in(0, MAX_LAYER))))
_LAYER_PATTERN = _optional(_either(_text(regex=True), _list_of(_text(regex=True))))
_RANKS = _optional(_patterns(_RANK))
_ALPHAS = _optional(_patterns(_ALPHA))

_LYCORIS = {
    "r": _RANK, "alpha": _ALPHA, "rank_dropout": _PROBABILITY, "module_dropout": _PROBABILITY,
    "use_effective_conv2d": _bool, "target_modules": _MODULES, "exclude_modules": _MODULES,
    "layers_to_transform": _LAYERS, "layers_pattern": _LAYER_PATTERN,
    "rank_pattern": _RANKS, "alpha_pattern": _ALPHAS,
}

#: The fields stored per adapter type, each with the check of its value.
ALLOWLISTS = {
    "LORA": {
        "r": _RANK, "lora_alpha": _ALPHA, "lora_dropout": _PROBABILITY,
        "target_modules": _MODULES, "exclude_modules": _MODULES,
        "bias": _choice("none", "all", "lora_only"),
        "use_rslora": _bool, "use_dora": _bool, "fan_in_fan_out": _bool, "lora_bias": _bool,
        # Random or fixed inits only: no data, no files, base weights untouched.
        "init_lora_weights": _choice(True, False, "gaussian", "orthogonal"),
        "layers_to_transform": _LAYERS, "layers_pattern": _LAYER_PATTERN,
        "rank_pattern": _RANKS, "alpha_pattern": _ALPHAS,
    },
    "IA3": {
        "target_modules": _MODULES, "exclude_modules": _MODULES, "feedforward_modules": _MODULES,
        "fan_in_fan_out": _bool, "init_ia3_weights": _bool,
    },
    "LOHA": {**_LYCORIS, "init_weights": _bool},
    "LOKR": {
        **_LYCORIS, "decompose_both": _bool, "rank_dropout_scale": _bool,
        "decompose_factor": _int_in(-1, MAX_RANK, skip=(0,)),
        "init_weights": _choice(True, False, "lycoris"),
    },
}


def _peft_classes():
    """The supported config classes, by the ``peft_type`` they store (a fixed dict)."""
    try:
        from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig
    except ImportError as error:
        raise ImportError(f"{_INSTALL} (importing it failed: {error})") from error
    return {"LORA": LoraConfig, "IA3": IA3Config, "LOHA": LoHaConfig, "LOKR": LoKrConfig}


def _short(value, limit=60):
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _qualified(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


#: Fields whose lists peft turns into sets: stored sorted, once each.
_NAME_SETS = frozenset({"target_modules", "exclude_modules", "feedforward_modules"})


def _plain(name, value):
    """A live config's value in stored form: sets sorted to lists, tuples as lists."""
    if (name in _NAME_SETS and isinstance(value, (list, tuple, set, frozenset))
            and all(type(i) is str for i in value)):
        return sorted(set(value))
    if isinstance(value, (set, frozenset)):
        items = list(value)
        return sorted(items) if all(type(i) is str for i in items) else items
    if isinstance(value, tuple):
        return list(value)
    return value


def _differs(value, default):
    if value is default:
        return False
    if type(value) is not type(default):
        return True
    try:
        return bool(value != default)
    except Exception:
        return True


def config_state(config):
    """A peft adapter config as plain, JSON-safe data that a model file can hold.

    Parameters
    ----------
    config : peft.LoraConfig, peft.IA3Config, peft.LoHaConfig or peft.LoKrConfig
        The config (exactly one of these classes, not a subclass). LoRA
        covers DoRA (``use_dora``) and rsLoRA (``use_rslora``).

    Returns
    -------
    dict
        ``{"peft_type": <type>, "fields": {<field>: <value>}}`` with every
        field of the type's allowlist (:data:`ALLOWLISTS`). Sets of module
        names are stored as sorted lists.

    Raises
    ------
    ValueError
        When the config's type is not supported, a field outside the
        allowlist differs from its default, or an allowlisted field holds a
        value that cannot be stored (a data-driven ``init_lora_weights``, a
        rank above 4096, ...). The message names the type or field.
    ImportError
        When peft is not installed.

    Examples
    --------
    >>> from peft import LoKrConfig, LoraConfig
    >>> config_state(LoraConfig(r=16, use_dora=True))["fields"]["use_dora"]
    True
    >>> config_state(LoKrConfig(decompose_both=True))["peft_type"]
    'LOKR'
    >>> config_state(LoraConfig(megatron_core="evil"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: peft.tuners.lora.config.LoraConfig field 'megatron_core' ... cannot be stored ...
    """
    classes = _peft_classes()
    kind = next((k for k, cls in classes.items() if type(config) is cls), None)
    if kind is None:
        raise ValueError(
            f"adapter config {_qualified(type(config))} cannot be stored in a model file: "
            f"sktransfer stores only {', '.join(_qualified(c) for c in classes.values())} "
            "(exactly these classes)")
    cls, allowed = classes[kind], ALLOWLISTS[kind]
    name_of = _qualified(cls)
    own = vars(config)
    default = cls()
    defaults = vars(default)
    field_names = {f.name for f in dataclasses.fields(cls)}
    if own.get("peft_type") != default.peft_type:
        raise ValueError(f"{name_of} field 'peft_type' is {_short(own.get('peft_type'))}, not "
                         f"{kind}: such a config cannot be stored in a model file")
    fields = {}
    for name in sorted(field_names | set(own)):
        value = own.get(name, defaults.get(name))
        if name in allowed:
            try:
                fields[name] = allowed[name](_plain(name, value))
            except _Bad as bad:
                raise ValueError(f"{name_of} field {name!r} = {_short(value)} cannot be stored "
                                 f"in a model file: {bad}") from None
        elif name in UNSTORED or name == "peft_type":
            continue
        elif name not in field_names and name not in defaults:
            raise ValueError(f"{name_of} attribute {name!r} is not one of peft's fields and "
                             "cannot be stored in a model file")
        elif _differs(value, defaults.get(name)):
            raise ValueError(
                f"{name_of} field {name!r} is set to {_short(value)}, which cannot be stored in "
                f"a model file (only {', '.join(allowed)} are): leave it at its default "
                f"{_short(defaults.get(name))}")
    return {"peft_type": kind, "fields": fields}


def config_from_state(state):
    """Rebuild a peft adapter config from :func:`config_state`'s data, read from a file.

    The state is untrusted: its type must be one of :data:`ALLOWLISTS`
    (the class is taken from a fixed dict, nothing is imported by name), and
    every field must be allowlisted and hold a value of exactly the right
    plain type and size. Fields left out take peft's defaults.

    Parameters
    ----------
    state : dict
        ``{"peft_type": str, "fields": dict}``, and nothing else.

    Returns
    -------
    peft.PeftConfig
        A new config; ``config_state`` of it equals ``state`` when ``state``
        came from ``config_state``.

    Raises
    ------
    ValueError
        When the state is not of that form, names an unsupported type, an
        unknown field or a value that does not fit (the message names it), or
        when peft rejects the combination of fields.
    ImportError
        When peft is not installed.

    Examples
    --------
    >>> config = config_from_state({"peft_type": "IA3", "fields": {"target_modules": ["fc1"],
    ...                                                             "feedforward_modules": ["fc1"]}})
    >>> type(config).__name__, sorted(config.feedforward_modules)
    ('IA3Config', ['fc1'])
    >>> config_from_state({"peft_type": "LORA", "fields": {"r": [8]}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: stored LORA adapter config: field 'r' = [8] is refused: expected an int from 1 to 4096
    """
    if type(state) is not dict:
        raise ValueError(f"a stored adapter config must be a dict, not {type(state).__name__}")
    keys = set(state)
    if keys != {"peft_type", "fields"}:
        odd = sorted(_short(k) for k in keys ^ {"peft_type", "fields"})
        raise ValueError(f"a stored adapter config has exactly the keys 'peft_type' and "
                         f"'fields'; this one differs in {', '.join(odd)}")
    kind, fields = state["peft_type"], state["fields"]
    if type(kind) is not str or kind not in ALLOWLISTS:
        raise ValueError(f"stored adapter type {_short(kind)} cannot be loaded: only "
                         f"{', '.join(ALLOWLISTS)} adapters are stored by sktransfer")
    if type(fields) is not dict:
        raise ValueError(f"stored {kind} adapter config: 'fields' must be a dict, "
                         f"not {type(fields).__name__}")
    allowed = ALLOWLISTS[kind]
    checked = {}
    for name, value in fields.items():
        if type(name) is not str or name not in allowed:
            raise ValueError(f"stored {kind} adapter config: field {_short(name)} cannot be "
                             f"loaded (only {', '.join(allowed)} are stored)")
        try:
            checked[name] = allowed[name](value)
        except _Bad as bad:
            raise ValueError(f"stored {kind} adapter config: field {name!r} = {_short(value)} "
                             f"is refused: {bad}") from None
    cls = _peft_classes()[kind]
    try:
        return cls(**checked)
    except (ValueError, TypeError) as error:
        raise ValueError(f"stored {kind} adapter config is refused by peft: {error}") from error
