"""An ensemble's ONNX graphs (``repository.py``, ``ensembles.py``): each component's graph
checked against its config and the next step, and the chain merged into one graph
(``onnx.compose``) that ONNX Runtime runs and optimizes as one network. The ``onnx`` package
is imported only here, only when an ensemble loads: the serving install does not need it
(``backends/onnxruntime.py`` then runs the components as sessions in turn)."""

from __future__ import annotations

from typing import Any

from smoothcert.model_config import ModelConfigError

from ..ensembles import ComponentVersion
from ..repository import ModelVersion

STEP_PREFIX = "smoothserve_step{}/"  # a merged ensemble's names, per step


def static_mismatch(shape: list[Any], dims: tuple[int, ...]) -> bool:
    """A graph's tensor shape (batch axis first; ints, or names/None for free axes) disagrees
    with a config's dims (no batch axis; -1 for any size)."""
    declared = list(shape)[1:]
    return len(declared) != len(dims) or any(
        isinstance(d, int) and d > 0 and want != -1 and d != want
        for d, want in zip(declared, dims, strict=True)
    )


def check_component(
    step: ComponentVersion, inputs: list[tuple[str, list]], outputs: list[tuple[str, list]]
) -> None:
    """One component's graph (its inputs and outputs: name and shape) against its config."""
    where = str(step.path)
    names = [name for name, _ in inputs]
    if names != [step.input.name]:
        raise ModelConfigError(f"{where}: the network's inputs are {names}, its config says "
                               f"{step.input.name!r}")  # fmt: skip
    shapes = dict(outputs)
    if step.output.name not in shapes:
        raise ModelConfigError(f"{where}: the network has no output {step.output.name!r} (it has "
                               f"{list(shapes)})")  # fmt: skip
    if static_mismatch(inputs[0][1], step.input.dims):
        raise ModelConfigError(f"{where}: the network takes inputs of shape {inputs[0][1][1:]}, "
                               f"its config says {list(step.input.dims)}")  # fmt: skip
    if static_mismatch(shapes[step.output.name], step.output.dims):
        raise ModelConfigError(f"{where}: the network gives {step.output.name!r} of shape "
                               f"{shapes[step.output.name][1:]}, its config says "
                               f"{list(step.output.dims)}")  # fmt: skip


def check_chain(steps: tuple[ComponentVersion, ...], graphs: list[tuple[list, list]]) -> None:
    """Each component's graph against its config, and each step's output shape against the
    next step's input shape where both graphs fix it."""
    for step, (inputs, outputs) in zip(steps, graphs, strict=True):
        check_component(step, inputs, outputs)
    for i in range(len(steps) - 1):
        given = dict(graphs[i][1])[steps[i].output.name][1:]
        taken = graphs[i + 1][0][0][1][1:]
        if len(given) != len(taken) or any(
            isinstance(a, int) and isinstance(b, int) and a > 0 and b > 0 and a != b
            for a, b in zip(given, taken, strict=True)
        ):
            raise ModelConfigError(
                f"{steps[i].path} gives {steps[i].output.name!r} of shape {given}, but "
                f"{steps[i + 1].path} takes inputs of shape {taken}"
            )


def _graph_io(model) -> tuple[list, list]:
    """(inputs, outputs) of an ONNX ModelProto: (name, shape) with the batch axis, free axes
    as their names or None; initializers listed as inputs (old exports) are left out."""

    def shape(value) -> list:
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim
        ]

    initializers = {i.name for i in model.graph.initializer}
    inputs = [(v.name, shape(v)) for v in model.graph.input if v.name not in initializers]
    return inputs, [(v.name, shape(v)) for v in model.graph.output]


def merge_ensemble(model: ModelVersion) -> bytes:
    """One ONNX graph running ``model``'s steps in turn, with the ensemble's input and output
    names; raises ImportError without the ``onnx`` package, ModelConfigError for a component
    that does not match its config, any other error for graphs that cannot be merged."""
    import onnx
    import onnx.compose
    from onnx import helper

    graphs = [onnx.load(str(step.path)) for step in model.steps]
    check_chain(model.steps, [_graph_io(g) for g in graphs])
    ir_version = max(g.ir_version for g in graphs)
    opsets: dict[str, int] = {}
    for g in graphs:
        for opset in g.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    prefixed = []
    for i, g in enumerate(graphs):
        own = {o.domain: o.version for o in g.opset_import}
        if own.get("", opsets.get("", 0)) != opsets.get("", 0):
            from onnx import version_converter

            g = version_converter.convert_version(g, opsets[""])
        g.ir_version = ir_version
        prefixed.append(onnx.compose.add_prefix(g, STEP_PREFIX.format(i)))
    steps = model.steps
    merged = prefixed[0]
    for i in range(1, len(prefixed)):
        given = STEP_PREFIX.format(i - 1) + steps[i - 1].output.name
        taken = STEP_PREFIX.format(i) + steps[i].input.name
        merged = onnx.compose.merge_models(
            merged, prefixed[i], io_map=[(given, taken)],
            outputs=[STEP_PREFIX.format(i) + steps[i].output.name],
        )  # fmt: skip
    if len(prefixed) == 1:
        last = STEP_PREFIX.format(0) + steps[0].output.name
        kept = [o for o in merged.graph.output if o.name == last]
        del merged.graph.output[:]
        merged.graph.output.extend(kept)
    config = model.config
    graph = merged.graph
    (first,) = [v for v in graph.input if v.name == STEP_PREFIX.format(0) + steps[0].input.name]
    (last,) = list(graph.output)
    entry, exit_ = onnx.ValueInfoProto(), onnx.ValueInfoProto()
    entry.CopyFrom(first)
    entry.name = config.input_name
    exit_.CopyFrom(last)
    exit_.name = config.output_name
    graph.node.insert(0, helper.make_node("Identity", [config.input_name], [first.name]))
    graph.node.append(helper.make_node("Identity", [last.name], [config.output_name]))
    others = [v for v in graph.input if v.name != first.name]  # initializers listed as inputs
    del graph.input[:]
    graph.input.extend([entry, *others])
    del graph.output[:]
    graph.output.append(exit_)
    return merged.SerializeToString()
