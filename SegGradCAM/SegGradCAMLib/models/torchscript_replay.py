"""Replaying a TorchScript module's graph from Python, so that forward hooks fire.

Forward hooks cannot be placed on ScriptModules. :class:`ScriptedModule` mirrors
the module tree: every module whose TorchScript graph is plain data flow (module
calls, operators with a schema, ``if``) runs its graph node by node from Python,
so hooks fire on its children; other modules (loops, calls to script functions)
run as one opaque call. This reads TorchScript's graph through private torch APIs
(``torch._C``): when a torch release changes them, building the mirror fails with
one line naming the torch version (:class:`~SegGradCAMLib.errors.SegGradCAMError`).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import SegGradCAMError


class _Unsupported(Exception):
    """A TorchScript node that :class:`ScriptedModule` cannot replay."""


Program = list[tuple[str, tuple[int, ...], tuple[int, ...], Any]]
_PLAIN_NODES = frozenset(
    {
        "prim::ListConstruct",
        "prim::TupleConstruct",
        "prim::ListUnpack",
        "prim::TupleUnpack",
        "prim::RaiseException",
        "prim::Uninitialized",
        "prim::unchecked_cast",
    }
)
# Generic list operators, replayed on Python lists (torch.ops cannot type them).
_LIST_OPS: dict[str, Callable] = {
    "aten::__getitem__.t": operator.getitem,
    "aten::len.t": len,
    "aten::append.t": lambda items, item: items.append(item) or items,
    "aten::insert.t": list.insert,
    "aten::reverse.t": list.reverse,
    "aten::add.t": operator.add,
    "aten::list.t": list,
}


@dataclasses.dataclass(frozen=True)
class _Method:
    program: Program
    inputs: tuple[int, ...]
    output: int


class ScriptedModule(nn.Module):
    """A Python mirror of a ScriptModule, on which forward hooks work.

    Children are mirrored under the same names. When the module's forward graph is
    plain data flow (module calls, operators with a schema, ``if``), it is replayed
    node by node in Python, children called through their mirrors so that their
    hooks fire; otherwise the ScriptModule runs as one opaque call (:attr:`opaque`)
    and its children are not mirrored. ``parameters()``/``buffers()``, ``.to()``
    and ``.train()`` act on the ScriptModule.
    """

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        object.__setattr__(self, "scripted", scripted)
        self._methods: dict[str, _Method | None] = {}
        try:
            self.opaque = scripted._c._has_method("forward") and self._method("forward") is None
        except (AttributeError, TypeError) as error:  # torch's private graph API changed
            raise SegGradCAMError(
                f"Replaying TorchScript graphs relies on torch internals that torch {torch.__version__} "
                f"does not offer ({error}); load the weights as a state_dict with a JSON spec instead."
            ) from error
        if not self.opaque:
            for name, child in scripted.named_children():
                self.add_module(name, ScriptedModule(child))

    def _method(self, name: str) -> _Method | None:
        """The compiled graph of method ``name``, or ``None`` when it cannot be replayed."""
        if name not in self._methods:
            try:
                graph = getattr(self.scripted, name).graph
                self._methods[name] = _Method(
                    _compile(graph.block()),
                    tuple(v.unique() for v in graph.inputs()),
                    next(iter(graph.outputs())).unique(),
                )
            except (_Unsupported, RuntimeError):
                self._methods[name] = None
        return self._methods[name]

    def call(self, name: str, args: list) -> Any:
        """Run method ``name``: replayed when possible, else by the ScriptModule."""
        method = self._method(name)
        if method is None:
            return getattr(self.scripted, name)(*args)
        values = dict(zip(method.inputs, (self, *args)))
        _execute(method.program, values)
        return values[method.output]

    def forward(self, *args: Any) -> Any:
        return self.call("forward", list(args))

    def train(self, mode: bool = True) -> "ScriptedModule":
        self.scripted.train(mode)
        return super().train(mode)

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
        return self.scripted.named_parameters(*args, **kwargs)

    def named_buffers(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
        return self.scripted.named_buffers(*args, **kwargs)

    def _apply(self, fn: Callable, recurse: bool = True) -> "ScriptedModule":
        self.scripted._apply(fn)
        return self


def _compile(block: torch._C.Block) -> Program:
    """Translate a graph block into ``(kind, inputs, outputs, payload)`` steps."""
    program: Program = []
    for node in block.nodes():
        kind = node.kind()
        if kind == "prim::Constant":
            if node.output().type().kind() == "FunctionType":
                raise _Unsupported(kind)
            payload = node.output().toIValue()
        elif kind in ("prim::GetAttr", "prim::CallMethod"):
            payload = node.s("name")
        elif kind == "prim::If":
            payload = tuple((_compile(b), tuple(v.unique() for v in b.outputs())) for b in node.blocks())
        elif kind in _PLAIN_NODES:
            payload = None
        else:
            payload = _operator(node)
        inputs, outputs = (tuple(v.unique() for v in values) for values in (node.inputs(), node.outputs()))
        program.append((kind, inputs, outputs, payload))
    return program


def _operator(node: torch._C.Node) -> tuple[Callable, tuple[str | None, ...]]:
    """The callable a node runs and its keyword-only argument names (``None``: positional)."""
    text = node.schema()
    if text == "(no schema)":
        raise _Unsupported(node.kind())
    schema = torch._C.parse_schema(text)
    qualified = f"{schema.name}.{schema.overload_name}"
    if qualified in _LIST_OPS:
        return _LIST_OPS[qualified], ()
    for argument in schema.arguments:
        kind = argument.type.kind()
        writes = argument.alias_info is not None and argument.alias_info.is_write
        generic = any(t.kind() == "VarType" for t in argument.type.containedTypes())
        if kind in ("ListType", "DictType") and (writes or generic):
            raise _Unsupported(qualified)
    namespace, name = schema.name.split("::")
    try:
        op = getattr(getattr(getattr(torch.ops, namespace), name), schema.overload_name or "default")
    except (AttributeError, RuntimeError) as error:
        raise _Unsupported(qualified) from error
    return op, tuple(a.name if a.kwarg_only else None for a in schema.arguments)


def _execute(program: Program, values: dict[int, Any]) -> None:
    """Run compiled steps, reading and writing ``values`` by value id."""
    for kind, inputs, outputs, payload in program:
        args = [values[i] for i in inputs]
        if kind == "prim::Constant":
            results = (payload,)
        elif kind == "prim::GetAttr":
            owner = args[0]
            if isinstance(owner, ScriptedModule):
                child = owner._modules.get(payload)
                results = (child if child is not None else getattr(owner.scripted, payload),)
            else:
                results = (getattr(owner, payload),)
        elif kind == "prim::CallMethod":
            owner = args[0]
            if isinstance(owner, ScriptedModule):
                results = (owner(*args[1:]) if payload == "forward" else owner.call(payload, args[1:]),)
            else:
                results = (getattr(owner, payload)(*args[1:]),)
        elif kind == "prim::If":
            steps, branch_outputs = payload[0] if args[0] else payload[1]
            _execute(steps, values)
            results = tuple(values[i] for i in branch_outputs)
        elif kind == "prim::ListConstruct":
            results = (list(args),)
        elif kind == "prim::TupleConstruct":
            results = (tuple(args),)
        elif kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            results = tuple(args[0])
        elif kind == "prim::RaiseException":
            raise RuntimeError(args[0])
        elif kind == "prim::Uninitialized":
            results = (None,)
        elif kind == "prim::unchecked_cast":
            results = (args[0],)
        else:
            op, keywords = payload
            named = {k: a for a, k in zip(args, keywords) if k is not None}
            positional = [a for i, a in enumerate(args) if i >= len(keywords) or keywords[i] is None]
            result = op(*positional, **named)
            results = result if len(outputs) > 1 else (result,)
        values.update(zip(outputs, results))
