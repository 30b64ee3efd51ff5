"""Where a classifier's evidence lives: the split of a network into backbone and head.

The attribution engine runs ``features`` once under ``no_grad`` and backpropagates through
``head`` alone (docs/architecture.md, "Attribution engine"). Every split says how its feature
map becomes an [N, C, h, w] grid (``to_grid``). Four kinds cover the zoo, timm and torchvision:

- :class:`NativeSplit` — timm's own ``forward_features`` / ``forward_head`` (the zoo's CNNs and
  every timm CNN; Swin-style NHWC maps are permuted);
- :class:`BlockSplit` — ViT-style transformers with a class-token head: the token sequence
  entering the last block (after it only the class token carries gradient);
- :class:`TokenSplit` — token models pooled over all tokens (MLP-Mixer, LeViT): the tokens;
- :class:`GraphSplit` — any ``torch.fx``-traceable model (torchvision's): the graph cut at the
  last spatial feature map before global pooling, found once by shape propagation.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

LAYOUTS = ("NCHW", "NHWC", "NLC")


class Split:
    """A network cut at its feature map: ``net(x) == head(features(x))``."""

    layout: str = "NCHW"
    layer: str = ""  # the feature layer's name, relative to the net (module path or graph node)

    def features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def head(self, a: Tensor) -> Tensor:
        raise NotImplementedError

    def to_grid(self, a: Tensor) -> Tensor:
        """The feature map as [N, C, h, w]."""
        if self.layout == "NHWC":
            return a.permute(0, 3, 1, 2)
        return a


class NativeSplit(Split):
    """timm's split: ``forward_features`` ends at the feature map, ``forward_head`` pools."""

    def __init__(self, net: nn.Module, layer: str, layout: str = "NCHW") -> None:
        self.net, self.layer, self.layout = net, layer, layout

    def features(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)

    def head(self, a: Tensor) -> Tensor:
        return self.net.forward_head(a)


class TokenGrid(Split):
    """Shared by the token splits: drop the prefix tokens, lay the patches on their grid."""

    layout = "NLC"
    prefix: int = 0

    def grid_size(self, x: Tensor) -> tuple[int, int] | None:
        return None

    def to_grid(self, a: Tensor) -> Tensor:
        patches = a[:, self.prefix :, :]
        count = patches.shape[1]
        h, w = self._grid or _square(count)
        if h * w != count:
            raise ValueError(f"{count} patch tokens do not form a {h} x {w} grid")
        return patches.transpose(1, 2).reshape(a.shape[0], a.shape[2], h, w)

    _grid: tuple[int, int] | None = None


class BlockSplit(TokenGrid):
    """A timm ViT cut before its last block: prefix tokens first, as the block expects.

    ``dynamic_img_size`` nets follow the input (a 4 x 4 grid at 64 px); the grid of the last
    input is kept for :meth:`to_grid`.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.prefix = int(getattr(net, "num_prefix_tokens", 1))
        self.layer = f"blocks.{len(net.blocks) - 2}"

    def features(self, x: Tensor) -> Tensor:
        net = self.net
        self._grid = tuple(net.patch_embed.dynamic_feat_size(tuple(x.shape[-2:])))
        ((patches, prefix),) = net.forward_intermediates(
            x,
            indices=[len(net.blocks) - 2],
            intermediates_only=True,
            stop_early=True,
            output_fmt="NLC",
            return_prefix_tokens=True,
        )
        return torch.cat([prefix, patches], dim=1) if self.prefix else patches

    def head(self, a: Tensor) -> Tensor:
        return self.net.forward_head(self.net.norm(self.net.blocks[-1](a)))


class TokenSplit(TokenGrid):
    """Token models whose head pools every token: the final tokens are the feature map."""

    def __init__(self, net: nn.Module, layer: str) -> None:
        self.net, self.layer = net, layer
        self.prefix = int(getattr(net, "num_prefix_tokens", 0) or 0)
        grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
        self._grid = tuple(grid) if grid is not None else None

    def features(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)

    def head(self, a: Tensor) -> Tensor:
        return self.net.forward_head(a)


class GraphSplit(TokenGrid):
    """Two ``fx.GraphModule`` halves of a traced net, built over the net's own modules, so
    loading weights into the net or moving it moves them too (a deep copy rebuilds them over
    the copied net)."""

    def __init__(
        self,
        net: nn.Module,
        graphs: tuple[fx.Graph, fx.Graph],
        layer: str,
        layout: str,
        prefix: int = 0,
        grid: tuple[int, int] | None = None,
    ) -> None:
        self.net, self.graphs = net, graphs
        self.layer, self.layout, self.prefix, self._grid = layer, layout, prefix, grid
        self._features = fx.GraphModule(net, graphs[0])
        self._head = fx.GraphModule(net, graphs[1])

    def __deepcopy__(self, memo: dict) -> GraphSplit:
        import copy

        net = copy.deepcopy(self.net, memo)
        return GraphSplit(net, self.graphs, self.layer, self.layout, self.prefix, self._grid)

    def features(self, x: Tensor) -> Tensor:
        return self._features(x)

    def head(self, a: Tensor) -> Tensor:
        return self._head(a)

    def to_grid(self, a: Tensor) -> Tensor:
        return TokenGrid.to_grid(self, a) if self.layout == "NLC" else Split.to_grid(self, a)


def _square(count: int) -> tuple[int, int]:
    side = math.isqrt(count)
    return side, side


# --- finding the split -------------------------------------------------------------------


def timm_split(net: nn.Module, input_size: tuple[int, int], in_chans: int) -> Split:
    """The split of a timm model: native, before the last block, or over its tokens."""
    with torch.no_grad():
        probe = torch.zeros(1, in_chans, *input_size)
        layer, out = _last_module_of(net, lambda x: net.forward_features(x), probe)
    if out.ndim == 4:
        layout = "NHWC" if str(getattr(net, "output_fmt", "NCHW")) == "NHWC" else "NCHW"
        return NativeSplit(net, layer, layout)
    if out.ndim != 3:
        raise ValueError(f"forward_features gives shape {tuple(out.shape)}; name a target layer")
    if getattr(net, "global_pool", None) in ("token", "map") and hasattr(net, "blocks"):
        return BlockSplit(net)
    return TokenSplit(net, layer)


def _last_module_of(net: nn.Module, run, probe: Tensor) -> tuple[str, Tensor]:
    """The outermost module whose output is ``run(probe)``'s result (an Identity is skipped):
    the module path a forward hook (or pytorch-grad-cam) would name for the same tensor."""
    outputs: list[tuple[str, Tensor]] = []
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: (
                outputs.append((name, out)) if isinstance(out, Tensor) else None
            )
        )
        for name, module in net.named_modules()
        if name and not isinstance(module, nn.Identity)
    ]
    try:
        result = run(probe)
    finally:
        for handle in handles:
            handle.remove()
    for name, out in reversed(outputs):
        if out is result or (out.shape == result.shape and torch.equal(out, result)):
            return name, result
    return "", result


_TRACED: dict[tuple, tuple] = {}  # structure -> (graphs, layer, layout, prefix, grid)
MAX_TRACED = 32


def graph_split(
    net: nn.Module,
    input_size: tuple[int, int],
    in_chans: int,
    layer: str | None = None,
    token_block: str | None = None,
) -> GraphSplit:
    """Cut a traced ``net`` at graph node ``layer`` (default: the last spatial feature map
    before global pooling, by shape propagation; ``token_block``: the output of that module,
    for class-token transformers). Traced once per net structure and input: a second net of
    the same arch (another checkpoint) reuses the graphs over its own modules."""
    key = (_structure(net), tuple(input_size), in_chans, layer, token_block)
    if key not in _TRACED:
        if len(_TRACED) >= MAX_TRACED:
            _TRACED.pop(next(iter(_TRACED)))
        _TRACED[key] = _trace_split(net, input_size, in_chans, layer, token_block)
    graphs, cut, layout, prefix, grid = _TRACED[key]
    return GraphSplit(net, graphs, cut, layout, prefix, grid)


def _structure(net: nn.Module) -> tuple:
    """What a traced graph depends on: every module's path and type, every tensor's shape."""
    modules = tuple((name, type(m).__qualname__) for name, m in net.named_modules())
    tensors = tuple((name, tuple(t.shape)) for name, t in net.state_dict().items())
    return modules, tensors


def _trace_split(
    net: nn.Module,
    input_size: tuple[int, int],
    in_chans: int,
    layer: str | None,
    token_block: str | None,
) -> tuple:
    was_training = net.training
    net.eval()  # traced in eval mode: no auxiliary heads, no training-only branches
    try:
        gm = fx.GraphModule(net, _Tracer(token_block).trace(net))
    except Exception as exc:
        raise ValueError(
            f"this model cannot be traced by torch.fx ({type(exc).__name__}); name a target "
            "layer (a module path) instead"
        ) from None
    finally:
        net.train(was_training)
    ShapeProp(gm).propagate(torch.zeros(1, in_chans, *input_size))
    cut = _find_node(gm, layer, token_block)
    shape = tuple(cut.meta["tensor_meta"].shape)
    layout, prefix, grid = "NCHW", 0, None
    if len(shape) == 3:
        layout, prefix = "NLC", 1
        side = _square(shape[1] - 1)
        grid = side if side[0] * side[1] == shape[1] - 1 else None
    graphs = (_features_of(gm, cut), _head_of(gm, cut))
    return graphs, cut.name, layout, prefix, grid


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping one named module (a transformer block) as a single node."""

    def __init__(self, leaf: str | None) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.leaf or super().is_leaf_module(
            m, module_qualified_name
        )


def _find_node(gm: fx.GraphModule, layer: str | None, token_block: str | None) -> fx.Node:
    nodes = list(gm.graph.nodes)
    if layer is not None:
        for node in nodes:
            if node.name == layer:
                return node
        raise ValueError(f"target_layer {layer!r} is not a node of this model's graph")
    if token_block is not None:
        return next(n for n in nodes if n.op == "call_module" and n.target == token_block)
    spatial = [n for n in nodes if _spatial(n.meta.get("tensor_meta"))]
    if not spatial:
        raise ValueError("no spatial feature map found in this model; name a target layer")
    return spatial[-1]


def _spatial(meta: object) -> bool:
    """A 4-D tensor with a spatial extent (a pooled [N, C, 1, 1] is not a feature map)."""
    shape = getattr(meta, "shape", None)
    return shape is not None and len(shape) == 4 and shape[2] > 1 and shape[3] > 1


def _features_of(gm: fx.GraphModule, cut: fx.Node) -> fx.Graph:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            break
        env[node] = graph.node_copy(node, lambda n: env[n])
        if node is cut:
            break
    graph.output(env[cut])
    features = fx.GraphModule(gm, graph)
    features.graph.eliminate_dead_code()
    return features.graph


def _head_of(gm: fx.GraphModule, cut: fx.Node) -> fx.Graph:
    """The graph from ``cut`` to the output; refused if it needs anything before ``cut``."""
    downstream = {cut}
    for node in gm.graph.nodes:
        if any(n in downstream for n in node.all_input_nodes):
            downstream.add(node)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cut: graph.placeholder("features")}
    for node in gm.graph.nodes:
        if node is cut or node not in downstream:
            continue
        for needed in node.all_input_nodes:
            if needed in env:
                continue
            if needed.op != "get_attr":
                raise ValueError(
                    f"the graph after {cut.name!r} also uses {needed.name!r}: not a clean "
                    "feature-map cut; name another target layer"
                )
            env[needed] = graph.node_copy(needed)
        env[node] = graph.node_copy(node, lambda n: env[n])
    return graph
