"""Your own backbone: any functional ``keras.Model`` FFSD can train, and a helper for Keras' own.

A backbone maps normalised images ``[B, H, W, C]`` to ``{"logits": [B, K], "features": [F^1..F^M]}``
(``registry``'s contract): M stage outputs, shallow to deep, the last one being the map the fusion
module merges (Eq. 4) and the attention diversity compares (Eq. 9). ``as_backbone`` also accepts a
model returning ``[logits, F^1, ..., F^M]`` or ``(logits, [F^1, ..., F^M])``.

``from_keras`` turns a headless ``keras.applications`` model (``include_top=False``) or a KerasHub
backbone into one by naming its stage layers; it adds global average pooling and a linear
classifier on the last stage.

``check_backbone`` states, in one line, why a backbone cannot be used by a cohort: logits of the
wrong width, feature maps that are not static ``[B, H, W, C]``, fewer stages than the
self-distillation decoders need (2), or stages whose sizes do not halve (each decoder block is a
stride-2 transposed convolution, Eq. 10).
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers


def _is_tensor_list(x) -> bool:
    return isinstance(x, (list, tuple)) and all(not isinstance(t, (list, tuple, dict)) for t in x)


def as_backbone(model: keras.Model, name: str | None = None) -> keras.Model:
    """``model`` as a functional model returning ``{"logits", "features"}`` (a new graph, same layers)."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"a backbone must be a keras.Model, got {type(model).__name__}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):  # subclassed, never called
        inputs = outputs = None
    if outputs:
        try:
            structure = model.output  # the nested structure (dict, tuple) of a functional model
        except (AttributeError, ValueError):  # Sequential: only the flat list
            structure = outputs[0] if len(outputs) == 1 else outputs
    if not inputs or len(inputs) != 1:
        raise ValueError(f"backbone {model.name!r} must be a functional keras.Model with one image input "
                         "(build it with keras.Input, or wrap it: keras.Model(inputs, outputs))")
    if isinstance(structure, dict):
        if set(structure) < {"logits", "features"} or not _is_tensor_list(structure["features"]):
            raise ValueError(f"backbone {model.name!r} returns a dict with keys {sorted(structure)}; it needs "
                             "'logits' and 'features' (a list of stage maps, shallow to deep)")
        logits, features = structure["logits"], list(structure["features"])
    elif isinstance(structure, (list, tuple)) and len(structure) == 2 and _is_tensor_list(structure[1]):
        logits, features = structure[0], list(structure[1])
    elif _is_tensor_list(structure) and len(structure) >= 2:
        logits, features = structure[0], list(structure[1:])
    else:
        raise ValueError(f"backbone {model.name!r} returns {len(outputs)} tensor(s); it needs logits and its stage "
                         "feature maps: {'logits': z, 'features': [F1, ..., FM]} (see ffsd_tf.networks.custom)")
    return keras.Model(inputs[0], {"logits": logits, "features": features}, name=name or model.name)


def from_keras(base: keras.Model, stage_layers: Sequence[str], num_classes: int, name: str | None = None) -> keras.Model:
    """A backbone from a headless Keras model: the outputs of ``stage_layers`` are its stages.

    ``base``: e.g. ``keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False,
    weights=None)`` or a KerasHub backbone; ``stage_layers``: layer names, shallow to deep (the last
    one is usually the model's last layer). Logits: global average pooling of the last stage and a
    ``Dense(num_classes)``. Pretrained weights (``weights="imagenet"``) are kept in ``base`` itself;
    FFSD clones the backbone for every network of the cohort, which re-initialises them.
    """
    if not isinstance(base, keras.Model) or not base.inputs:
        raise ValueError("from_keras needs a functional keras.Model (keras.applications or a KerasHub backbone)")
    if not stage_layers:
        raise ValueError("name at least one stage layer (shallow to deep), e.g. the last layer of each resolution")
    known = {layer.name for layer in base.layers}
    missing = [n for n in stage_layers if n not in known]
    if missing:
        raise ValueError(f"{base.name} has no layer {missing[0]!r}; choose stage layers from base.summary()")
    features = [base.get_layer(n).output for n in stage_layers]
    pooled = layers.GlobalAveragePooling2D(name="ffsd_avgpool")(features[-1])
    logits = layers.Dense(int(num_classes), name="ffsd_logits")(pooled)
    return keras.Model(base.inputs[0], {"logits": logits, "features": features}, name=name or base.name)


def clone_backbone(model: keras.Model, name: str) -> keras.Model:
    """A fresh copy of ``model`` (same architecture, newly initialised weights) named ``name``."""
    fresh = keras.models.clone_model(model)
    return keras.Model(fresh.inputs[0], fresh.output, name=name)


def check_backbone(model: keras.Model, *, num_classes: int, input_shape, decoders: bool, label: str | None = None) -> None:
    """One-line ``ValueError`` when a cohort cannot use ``model`` (see the module docstring)."""
    who = f"backbone {label or model.name!r}"
    got_input = tuple(model.input_shape[1:])
    if got_input != tuple(input_shape):
        raise ValueError(f"{who} takes images of shape {got_input}, the data has {tuple(input_shape)}; "
                         "build it with keras.Input(shape=...) matching the data")
    width = model.output["logits"].shape[-1]
    if len(model.output["logits"].shape) != 2 or width != num_classes:
        raise ValueError(f"{who} returns logits of shape {tuple(model.output['logits'].shape)}, need (batch, "
                         f"{num_classes}) for {num_classes} classes")
    shapes = [tuple(f.shape[1:]) for f in model.output["features"]]
    if not shapes:
        raise ValueError(f"{who} returns no feature maps; FFSD needs its stage outputs, shallow to deep")
    for m, s in enumerate(shapes, 1):
        if len(s) != 3 or any(d is None for d in s):
            raise ValueError(f"{who}: feature map {m} has shape {s}; every stage must be a static (H, W, C) map "
                             "(fix the input size with keras.Input(shape=...))")
    if decoders:
        if len(shapes) < 2:
            raise ValueError(f"{who} has {len(shapes)} feature stage; the self-distillation decoders need at least "
                             "2 (name more stage layers, or self_distillation='none')")
        for m in range(len(shapes) - 1):
            (h, w, _), (h2, w2, _) = shapes[m], shapes[m + 1]
            if (h, w) != (2 * h2, 2 * w2):
                raise ValueError(f"{who}: stage {m + 1} is {h}x{w} and stage {m + 2} is {h2}x{w2}; the self-"
                                 "distillation decoders need each stage half the size of the one before (stage "
                                 "layers at successive resolutions, an input size that halves evenly, or "
                                 "self_distillation='none')")
