"""Block-graph CTR models (NASRec's search space, `search/nasrec/`): an architecture kind `blocks`.

A model is N blocks over two node types, dense [B, w] and sparse [B, tokens, token_dim]. Node 0 is the
input: the dense features and one token per sparse feature (each table's pooled embedding, at its own
dim, projected to `token_dim`). Block j (1..N) reads 1-4 earlier nodes on each side and computes

* a dense op on its dense inputs (concatenated): `fc` (linear, LayerNorm, ReLU), `sum` (LayerNorm of the
  sum of a linear map of its first input and one of the others), `gating` (LayerNorm of
  sigmoid(linear(first)) x linear(others)) or `dot` (DLRM's pairwise dot products between the dense
  inputs projected to one token and the sparse inputs compressed to `dot_tokens` tokens, then linear
  and LayerNorm), `interact` (DLRM's dot interaction: its dense inputs projected to one token, pairwise
  dot products of that token and the embeddings -- node 0's tokens --, the token and the products through
  linear, LayerNorm, ReLU) or `cross` (DCN's low-rank cross layers over its dense inputs and the
  flattened embeddings, then linear, LayerNorm, ReLU) -- `width` columns;
* a sparse op on its sparse inputs (concatenated along tokens): `efc` (a linear map over the token axis,
  per-token LayerNorm) or `attention` (the same map, then a transformer layer: multi-head self-attention
  and a feed-forward layer, each with a residual and LayerNorm) -- `tokens` tokens;
* optionally `fm`: a factorisation-machine term of its sparse output, projected to `width` and added to
  its dense output (sparse -> dense merger), and `merge`: its dense output projected to
  `merger_tokens` tokens appended to its sparse output (dense -> sparse merger).

The last block's dense output (and its flattened sparse output, if the graph's `final_sparse`) feeds the
final linear layer (one logit). DLRM and DCN are points of this space (`search/nasrec/space.py`,
`dlrm_graph` and `dcn_graph`).

One class, two modes (`BlockNet`):

* fixed (`graph` given): exactly the chosen ops at their widths, over the chosen inputs -- the model a
  TorchRec pipeline trains and serves (its EBC sharded by the planner, its dense part under DDP);
* supernet (`graph=None`): every op of the space at the space's largest width over every earlier node;
  `set_graph` picks a path before a step: unselected inputs are zeros, a smaller width or token count is
  a prefix mask (LayerNorm over the active prefix, attention over the active tokens), unused ops are not
  run. A fixed model whose weights are cut from the supernet's (`subnet_state`) computes exactly the
  supernet's output for its graph -- which is what makes supernet scores stand for subnets.

Example::

    graph = BlockGraph.from_dict(arch.extra["blocks"])
    model = BlockNet(ebc, num_dense=13, graph=graph, space=BlockSpace.from_dict(arch.extra["space"]))
    logits = model(dense, kjt)  # [B]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_aes.architecture import Architecture, ArchKind, register_kind
from torchrec_aes.data.schema import Schema
from torchrec_aes.models.block_graph import (
    ALL_LIVE,
    Block,
    BlockGraph,
    BlockSpace,
    Live,
    liveness,
)
from torchrec_aes.models.blocks_report import graph_section
from torchrec_aes.models.ctr import TableSpec
from torchrec_aes.train.hooks import TrainHooks

# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------


class SlotLinear(nn.Linear):
    """A linear map whose input columns are given slots of the supernet's: `source` lists, for each of its
    input columns, the supernet column it is (None: the first `in_features`). Weights are cut from the
    supernet's by `subnet_state`."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, source: list[int] | None = None
    ):
        super().__init__(in_features, out_features, bias=bias)
        self.source = source


class CrossStack(nn.Module):
    """DCN-v2's low-rank cross layers, x_{l+1} = x_0 * (V_l U_l x_l + b_l) + x_l (as TorchRec's
    `LowRankCrossNet`), over `width` columns; `source` as `SlotLinear`'s (a fixed model's columns are these
    supernet columns: U's inputs, V's outputs and b are cut to them). A column that is zero in x_0 stays
    zero, so the supernet's masked inputs compute the fixed model's output exactly."""

    def __init__(self, width: int, layers: int, rank: int, source: list[int] | None = None) -> None:
        super().__init__()
        self.source, self.layers = source, layers
        self.u = nn.Parameter(torch.empty(layers, rank, width))
        self.v = nn.Parameter(torch.empty(layers, width, rank))
        self.b = nn.Parameter(torch.zeros(layers, width))
        for layer in range(layers):
            nn.init.xavier_normal_(self.u.data[layer])
            nn.init.xavier_normal_(self.v.data[layer])

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in range(self.layers):  # (a Python int: TorchRec's pipeline traces with torch.fx)
            x = x0 * F.linear(F.linear(x, self.u[layer]), self.v[layer], self.b[layer]) + x
        return x


class NoNorm(nn.Module):
    """Stands in for the LayerNorms of a block without normalisation (`Block.norm` false): the identity,
    with the width it would normalise."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.normalized_shape = (width,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _layer_norm(x: torch.Tensor, ln: nn.Module, active: int, on: bool = True) -> torch.Tensor:
    """LayerNorm of the first `active` columns (the rest stay zero): a prefix-masked LayerNorm equal to a
    LayerNorm of width `active` (`NoNorm` or not `on`: x). (Widths are Python ints, never tensor shapes:
    TorchRec's train pipeline traces the model with torch.fx.)"""
    if isinstance(ln, NoNorm) or not on:
        return x
    assert isinstance(ln, nn.LayerNorm)
    width = ln.normalized_shape[0]
    if active == width:
        return ln(x)
    y = F.layer_norm(x[..., :active], (active,), ln.weight[:active], ln.bias[:active], ln.eps)
    return F.pad(y, (0, width - active))


def _norm(ln: nn.Module, x: torch.Tensor, on: bool) -> torch.Tensor:
    """`ln(x)` over the whole last axis, or x for a block without normalisation."""
    return ln(x) if on else x


def _fm(tokens: torch.Tensor) -> torch.Tensor:
    """[B, T, d] -> [B, d]: the factorisation-machine pairwise term (square of sum - sum of squares)."""
    return tokens.sum(dim=1).pow(2) - tokens.pow(2).sum(dim=1)


class _Block(nn.Module):
    """One block's modules: the chosen op's only (fixed) or every op of the space (supernet)."""

    def __init__(
        self,
        space: BlockSpace,
        block: Block | None,
        dense_cols: list[int] | None,
        token_cols: list[int] | None,
        dense_in: int,
        tokens_in: int,
        live: Live = ALL_LIVE,
        embeddings: int = 0,
        cross_cols: list[int] | None = None,
    ) -> None:
        """`embeddings`: node 0's token count (the features); `cross_cols`: the `cross` op's input columns
        in the supernet's (its dense inputs, then the flattened embeddings; None: the supernet)."""
        super().__init__()
        d = space.token_dim
        # (a transformer layer keeps its own two LayerNorms; the supernet holds both forms)
        norm: Any = nn.LayerNorm if block is None or block.norm else NoNorm
        width = block.width if block else space.max_width
        tokens = block.tokens if block else space.max_tokens
        dense_ops = ([block.dense_op] if live.dense else []) if block else list(space.dense_ops)
        sparse_ops = ([block.sparse_op] if live.sparse else []) if block else list(space.sparse_ops)
        # Binary ops split the dense inputs into the first one (left) and the others (right, or the first
        # again if it is alone); both read the whole concatenation, the unused part zero.
        self.dense = nn.ModuleDict()
        for op in dense_ops:
            if op == "fc":
                self.dense[op] = nn.ModuleDict(
                    {"linear": SlotLinear(dense_in, width, True, dense_cols), "ln": norm(width)}
                )
            elif op in ("sum", "gating"):
                self.dense[op] = nn.ModuleDict(
                    {
                        "left": SlotLinear(dense_in, width, True, dense_cols),
                        "right": SlotLinear(dense_in, width, True, dense_cols),
                        "ln": norm(width),
                    }
                )
            elif op == "interact":
                self.dense[op] = nn.ModuleDict(
                    {
                        "dense_proj": SlotLinear(dense_in, d, True, dense_cols),
                        "linear": nn.Linear(d + (embeddings + 1) * embeddings // 2, width),
                        "ln": norm(width),
                    }
                )
            elif op == "cross":
                n = dense_in + embeddings * d
                self.dense[op] = nn.ModuleDict(
                    {
                        "cross": CrossStack(n, space.cross_layers, space.cross_rank, cross_cols),
                        "linear": SlotLinear(n, width, True, cross_cols),
                        "ln": norm(width),
                    }
                )
            else:  # dot
                k = space.compressed_tokens
                self.dense[op] = nn.ModuleDict(
                    {
                        "dense_proj": SlotLinear(dense_in, d, True, dense_cols),
                        "dense_ln": norm(d),
                        "compress": SlotLinear(tokens_in, k, True, token_cols),
                        "token_ln": norm(d),
                        "linear": nn.Linear((k + 1) * k // 2, width),
                        "ln": norm(width),
                    }
                )
        self.sparse = nn.ModuleDict()
        for op in sparse_ops:
            mods: dict[str, nn.Module] = {
                "tokens": SlotLinear(tokens_in, tokens, True, token_cols),
                "ln": norm(d),
            }
            if op == "attention":
                mods["attn"] = nn.MultiheadAttention(d, space.heads, batch_first=True)
                mods["attn_ln"] = nn.LayerNorm(d)
                mods["ffn1"] = nn.Linear(d, d)
                mods["ffn2"] = nn.Linear(d, d)
                mods["ffn_ln"] = nn.LayerNorm(d)
            self.sparse[op] = nn.ModuleDict(mods)
        if block is None or live.merge:
            self.merge = nn.ModuleDict(
                {
                    "linear": nn.Linear(width, space.merger_tokens * d),
                    "ln": norm(space.merger_tokens * d),
                }
            )
        if block is None or live.fm:
            self.fm = nn.ModuleDict({"linear": nn.Linear(d, width), "ln": norm(width)})


class BlockNet(nn.Module):
    """A block-graph CTR model over a TorchRec EBC: `(dense [B, num_dense], KJT) -> logits [B]`.

    Args:
        embedding_bag_collection: the tables (possibly sharded); each feature's pooled embedding is its
            table's width (an `ElasticEmbeddingBagCollection` zero-padded to d_max in the supernet).
        num_dense: dense features.
        space: the search space (sizes shared by every model of it).
        graph: the blocks (fixed model), or None: the supernet (choose a path with `set_graph`).
    """

    def __init__(
        self, embedding_bag_collection: nn.Module, num_dense: int, space: BlockSpace, graph: BlockGraph | None
    ) -> None:
        super().__init__()
        if graph is not None and len(graph.blocks) != space.num_blocks:
            raise ValueError(f"the graph has {len(graph.blocks)} blocks; the space has {space.num_blocks}")
        self.sparse_arch = embedding_bag_collection
        self.space, self.graph, self.num_dense = space, graph, num_dense
        configs = embedding_bag_collection.embedding_bag_configs()  # type: ignore[operator]
        self.feature_names = [n for c in configs for n in c.feature_names]
        dims = {n: c.embedding_dim for c in configs for n in c.feature_names}
        d = space.token_dim
        self.token_proj = nn.ModuleDict({n: nn.Linear(dims[n], d, bias=False) for n in self.feature_names})
        if space.token_init == "identity":
            # Node 0's tokens start as the embeddings themselves (a table of d_f < token_dim fills the
            # first d_f columns), as DLRM and DCN use them; the prefix of the supernet's is a subnet's.
            with torch.no_grad():
                for proj in self.token_proj.values():
                    assert isinstance(proj, nn.Linear)
                    proj.weight.copy_(torch.eye(proj.out_features, proj.in_features))
        # Node widths: dense columns and token slots (supernet: the largest; fixed: the chosen).
        big_tokens = space.max_tokens + space.merger_tokens
        self.dense_width = [num_dense]
        self.token_width = [len(self.feature_names)]
        self.blocks = nn.ModuleList()
        self.block_dense_in: list[int] = []
        self.live = liveness(graph) if graph else [ALL_LIVE] * space.num_blocks
        n_embedded = len(self.feature_names)
        for j in range(1, space.num_blocks + 1):
            b = graph.blocks[j - 1] if graph else None
            cross_cols = None
            if b is None:
                dense_cols = token_cols = None
                dense_in, tokens_in = sum(self.dense_width), sum(self.token_width)
            else:
                dense_cols = self._cols(b.dense_in, self._dense_slot)
                token_cols = self._cols(b.sparse_in, self._token_slot)
                dense_in, tokens_in = len(dense_cols), len(token_cols)
                supernet_dense_in = num_dense + (j - 1) * space.max_width
                cross_cols = dense_cols + [supernet_dense_in + c for c in range(n_embedded * d)]
            self.block_dense_in.append(dense_in)
            self.blocks.append(
                _Block(
                    space,
                    b,
                    dense_cols,
                    token_cols,
                    dense_in,
                    tokens_in,
                    self.live[j - 1],
                    n_embedded,
                    cross_cols,
                )
            )
            self.dense_width.append(b.width if b else space.max_width)
            self.token_width.append(b.tokens + space.merger_tokens * b.merge if b else big_tokens)
        last = graph.blocks[-1] if graph else None
        final_cols = None
        final_in = self.dense_width[-1] + self.token_width[-1] * d
        if last is not None:
            assert graph is not None
            tok = self._token_slot(space.num_blocks) if graph.final_sparse else []
            final_cols = list(range(last.width)) + [
                space.max_width + t * d + c for t in tok for c in range(d)
            ]
            final_in = len(final_cols)
        self.final = SlotLinear(final_in, 1, True, final_cols)
        self._path: BlockGraph | None = graph

    # -- slots: where node i's columns sit in the supernet's concatenation of all earlier nodes ----------
    def _dense_slot(self, i: int) -> list[int]:
        """Supernet columns of node i's dense output within node i (prefix of its width)."""
        assert self.graph is not None
        return list(range(self.num_dense if i == 0 else self.graph.blocks[i - 1].width))

    def _token_slot(self, i: int) -> list[int]:
        """Supernet token positions of node i's sparse output within node i (its tokens, then its merger
        tokens at the supernet's [max_tokens, max_tokens + merger_tokens))."""
        assert self.graph is not None
        if i == 0:
            return list(range(len(self.feature_names)))
        b = self.graph.blocks[i - 1]
        merged = range(self.space.max_tokens, self.space.max_tokens + self.space.merger_tokens)
        return list(range(b.tokens)) + (list(merged) if b.merge else [])

    def _cols(self, inputs: tuple[int, ...], slot: Any) -> list[int]:
        """Supernet columns of the concatenation of `inputs` (supernet node i starts at the sum of the
        supernet widths of nodes < i)."""
        space = self.space
        dense = slot == self._dense_slot
        big = space.max_width if dense else space.max_tokens + space.merger_tokens
        start = [0]
        for i in range(1, max(inputs) + 1):
            start.append(
                start[-1] + ((self.num_dense if dense else len(self.feature_names)) if i == 1 else big)
            )
        return [start[i] + c for i in inputs for c in slot(i)]

    # -------------------------------------------------------------------------------------------------
    def set_graph(self, graph: BlockGraph) -> None:
        """Supernet: the path of the next forward passes (the same on every rank)."""
        if self.graph is not None:
            raise ValueError("set_graph: a fixed model has one graph")
        if len(graph.blocks) != self.space.num_blocks:
            raise ValueError(
                f"the graph has {len(graph.blocks)} blocks; the space has {self.space.num_blocks}"
            )
        self._path = graph

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        return self.interact(dense_features, self.sparse_arch(sparse_features).to_dict())

    def interact(self, dense_features: torch.Tensor, per_feature: dict[str, torch.Tensor]) -> torch.Tensor:
        """dense [B, num_dense] and each feature's pooled embedding -> logits [B]."""
        out = self.final(self.penultimate(dense_features, per_feature)).squeeze(-1)
        if self.graph is None and self.training and torch.is_grad_enabled():
            # DMP wraps the dense part in DDP with static_graph=True, which needs every parameter in every
            # step's graph: the ops this path does not use enter with weight 0.
            out = out + 0.0 * torch.stack([p.sum() for p in self.blocks.parameters()]).sum()
        return out

    def penultimate(self, dense_features: torch.Tensor, per_feature: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, final_in]: what the final layer reads (the last block's dense and flattened sparse output)."""
        graph = self._path
        if graph is None:
            raise ValueError("the supernet has no path: call set_graph first")
        supernet = self.graph is None
        tokens0 = torch.stack([self.token_proj[n](per_feature[n]) for n in self.feature_names], dim=1)
        # A fixed model skips the dead parts of its blocks (`liveness`): their outputs are never read.
        dense_nodes: list[Any] = [dense_features]
        token_nodes: list[Any] = [tokens0]
        mod: Any
        dense_in: Any
        left_in: Any
        right_in: Any
        tokens_in: Any
        for j, (mod, b, live) in enumerate(zip(self.blocks, graph.blocks, self.live, strict=True), start=1):
            if not (live.dense or live.sparse):
                dense_nodes.append(None)
                token_nodes.append(None)
                continue
            if supernet:
                zd = [x if i in b.dense_in else torch.zeros_like(x) for i, x in enumerate(dense_nodes)]
                zs = [x if i in b.sparse_in else torch.zeros_like(x) for i, x in enumerate(token_nodes)]
                dense_in, tokens_in = torch.cat(zd, dim=1), torch.cat(zs, dim=1)
                left_in = torch.cat(
                    [x if i == b.dense_in[0] else torch.zeros_like(x) for i, x in enumerate(dense_nodes)], 1
                )
                others = b.dense_in[1:] or b.dense_in[:1]
                right_in = torch.cat(
                    [x if i in others else torch.zeros_like(x) for i, x in enumerate(dense_nodes)], 1
                )
            else:
                dense_in = left_in = right_in = tokens_in = None
                if live.dense:
                    dense_in = torch.cat([dense_nodes[i] for i in b.dense_in], dim=1)
                    n_first = self.dense_width[b.dense_in[0]]
                    left_in = F.pad(dense_in[:, :n_first], (0, self.block_dense_in[j - 1] - n_first))
                    right_in = dense_in - left_in if len(b.dense_in) > 1 else left_in
                if live.sparse or (live.dense and b.dense_op == "dot"):
                    tokens_in = torch.cat([token_nodes[i] for i in b.sparse_in], dim=1)
            dense_out: Any = (
                self._dense_op(mod, b, dense_in, left_in, right_in, tokens_in, tokens0)
                if live.dense
                else None
            )
            sparse_out: Any = self._sparse_op(mod, b, tokens_in) if live.sparse else None
            if live.fm and b.fm:
                fm = mod.fm["linear"](_fm(sparse_out))
                dense_out = dense_out + _layer_norm(
                    self._mask(fm, b.width, mod.fm["ln"]), mod.fm["ln"], b.width, b.norm
                )
            merged = []
            m_tokens, d = self.space.merger_tokens, self.space.token_dim
            if live.merge and b.merge:
                m = _norm(mod.merge["ln"], mod.merge["linear"](dense_out), b.norm)
                merged.append(m.view(-1, m_tokens, d))
            elif supernet:
                merged.append(sparse_out[:, :1].mul(0.0).expand(-1, m_tokens, -1))
            dense_nodes.append(dense_out)
            token_nodes.append(torch.cat([sparse_out] + merged, dim=1) if sparse_out is not None else None)
        if not graph.final_sparse:
            if not supernet:
                return dense_nodes[-1]
            # (times 0, not zeros: DDP's static graph needs the token projections in every step's graph)
            token_nodes[-1] = token_nodes[-1] * 0.0
        return torch.cat([dense_nodes[-1], token_nodes[-1].flatten(1)], dim=1)

    @staticmethod
    def _mask(x: torch.Tensor, active: int, ln: nn.Module) -> torch.Tensor:
        """Zeroes the columns of x from `active` on, x as wide as `ln` (supernet prefix masks; a fixed
        model is at its width)."""
        width: int = ln.normalized_shape[0]  # type: ignore[index,assignment]
        return x if active == width else F.pad(x[..., :active], (0, width - active))

    def _dense_op(
        self,
        mod: _Block,
        b: Block,
        x: torch.Tensor,
        left: torch.Tensor,
        right: torch.Tensor,
        tokens: torch.Tensor,
        embeddings: torch.Tensor,
    ) -> torch.Tensor:
        op: Any = mod.dense[b.dense_op]
        w = b.width
        ln = op["ln"]
        if b.dense_op == "fc":
            y = F.relu(_layer_norm(self._mask(op["linear"](x), w, ln), ln, w, b.norm))
        elif b.dense_op == "sum":
            y = _layer_norm(self._mask(op["left"](left) + op["right"](right), w, ln), ln, w, b.norm)
        elif b.dense_op == "gating":
            y = torch.sigmoid(op["left"](left)) * op["right"](right)
            y = _layer_norm(self._mask(y, w, ln), ln, w, b.norm)
        elif b.dense_op == "interact":
            t0 = op["dense_proj"](x)  # [B, d]
            t = torch.cat([t0.unsqueeze(1), embeddings], dim=1)  # [B, 1 + F, d]
            z = torch.bmm(t, t.transpose(1, 2))
            k = len(self.feature_names) + 1
            li, lj = torch.tril_indices(k, k, offset=-1)
            y = op["linear"](torch.cat([t0, z[:, li, lj]], dim=1))
            y = F.relu(_layer_norm(self._mask(y, w, ln), ln, w, b.norm))
        elif b.dense_op == "cross":
            x0 = torch.cat([x, embeddings.flatten(1)], dim=1)
            y = op["linear"](op["cross"](x0))
            y = F.relu(_layer_norm(self._mask(y, w, ln), ln, w, b.norm))
        else:  # dot
            t0 = _norm(op["dense_ln"], op["dense_proj"](x), b.norm).unsqueeze(1)  # [B, 1, d]
            compressed = op["compress"](tokens.transpose(1, 2)).transpose(1, 2)  # [B, k, d]
            t = torch.cat([t0, _norm(op["token_ln"], compressed, b.norm)], dim=1)
            z = torch.bmm(t, t.transpose(1, 2))
            k = op["compress"].out_features + 1
            li, lj = torch.tril_indices(k, k, offset=-1)
            y = _layer_norm(self._mask(op["linear"](z[:, li, lj]), w, ln), ln, w, b.norm)
        return self._mask(y, w, ln)

    def _sparse_op(self, mod: _Block, b: Block, tokens: torch.Tensor) -> torch.Tensor:
        op: Any = mod.sparse[b.sparse_op]
        t = op["tokens"](tokens.transpose(1, 2)).transpose(1, 2)  # [B, T, d]
        n = op["tokens"].out_features
        active = b.tokens
        keep = None
        if active < n:
            keep = (torch.arange(n) < active).to(torch.float32)[None, :, None]
            t = t * keep
        y = _norm(op["ln"], t, b.norm)
        if b.sparse_op == "attention":
            # Supernet: the masked tokens are no keys (a [T, T] mask, the same for every row).
            block = None
            if active < n:
                block = (torch.arange(n) >= active)[None, :].expand(n, -1)
            a, _ = op["attn"](y, y, y, attn_mask=block, need_weights=False)
            y = op["attn_ln"](y + a)
            y = op["ffn_ln"](y + op["ffn2"](F.relu(op["ffn1"](y))))
        return y * keep if keep is not None else y


def subnet_state(supernet: BlockNet, subnet: BlockNet) -> dict[str, torch.Tensor]:
    """The dense weights of `subnet` (a fixed model) cut from `supernet`'s: rows and LayerNorm entries are
    prefixes, input columns of block inputs and of the final layer are the subnet's slots in the
    supernet's concatenation (`SlotLinear.source`); token projections keep the first d_f columns.
    Embedding tables are not included (their prefix columns are the subnet's tables)."""
    big = dict(supernet.named_parameters())
    owners = dict(subnet.named_modules())
    out: dict[str, torch.Tensor] = {}
    for name, p in subnet.named_parameters():
        if name.startswith("sparse_arch."):
            continue
        src: torch.Tensor = big[name]
        module = owners[name.rsplit(".", 1)[0]]
        if isinstance(module, SlotLinear) and module.source is not None and name.endswith("weight"):
            src = src[: p.shape[0]][:, module.source]
        elif isinstance(module, CrossStack) and module.source is not None:
            cols = torch.tensor(module.source)
            leaf = name.rsplit(".", 1)[1]  # u [L, r, n]: columns; v [L, n, r]: rows; b [L, n]
            src = src[:, :, cols] if leaf == "u" else (src[:, cols, :] if leaf == "v" else src[:, cols])
        else:
            src = src[tuple(slice(0, s) for s in p.shape)]
        if src.shape != p.shape:
            raise ValueError(f"{name}: supernet {tuple(src.shape)} cannot give subnet {tuple(p.shape)}")
        out[name] = src.detach().clone()
    return out


def dense_parameters(schema: Schema, dims: list[int], graph: BlockGraph, space: BlockSpace) -> int:
    """Parameters of the fixed model of `graph` outside its tables (built on the meta device: no memory,
    no initialisation)."""
    configs = Architecture.from_dims(schema, list(dims)).to_ebc_configs()
    with torch.device("meta"):
        net = BlockNet(TableSpec(configs), schema.num_dense, space, graph)  # type: ignore[arg-type]
    return sum(p.numel() for n, p in net.named_parameters() if not n.startswith("sparse_arch."))


# ---------------------------------------------------------------------------------------------------------
# The architecture kind
# ---------------------------------------------------------------------------------------------------------


def blocks_architecture(
    schema: Schema, dims: list[int], graph: BlockGraph, space: BlockSpace, data_type: str = "fp32"
) -> Architecture:
    """The deployed architecture (kind `blocks`): one table per feature at `dims`, the graph in `extra`."""
    arch = Architecture.from_dims(schema, dims, method="nasrec", data_types=data_type)
    arch.kind = "blocks"
    arch.extra = {"space": space.to_dict(), "blocks": graph.to_dict()}
    return arch


class BlocksHooks(TrainHooks):
    """Builds a fixed `BlockNet` in place of `model.type` (the training form of a `blocks` architecture)."""

    def __init__(self, graph: BlockGraph, space: BlockSpace) -> None:
        self.graph, self.space = graph, space

    def make_model(self, task: Any, ebc: Any) -> nn.Module:
        return BlockNet(ebc, task.schema.num_dense, self.space, self.graph)


class BlocksKind(ArchKind):
    """A block graph over one table per feature (NASRec): trains as a `BlockNet`; bytes = the tables."""

    name = "blocks"

    def graph(self, arch: Architecture, source: str = "architecture") -> tuple[BlockGraph, BlockSpace]:
        extra = arch.extra
        if not isinstance(extra.get("space"), dict) or "blocks" not in extra:
            raise ValueError(f"{source}: a blocks architecture needs extra.space and extra.blocks")
        space = BlockSpace.from_dict(extra["space"], f"{source}: extra.space")
        return BlockGraph.from_dict(extra["blocks"], space, f"{source}: extra.blocks"), space

    def training_form(self, arch: Architecture, source: str, schema: Schema) -> tuple[Architecture, Any]:
        source = source or "architecture"
        arch.check_schema(schema, source=source)
        dropped = [t.name for t in arch.tables if t.embedding_dim == 0]
        if dropped:
            raise ValueError(
                f"{source}: tables {dropped} have dim 0; a blocks architecture uses every feature"
            )
        graph, space = self.graph(arch, source)
        return arch, BlocksHooks(graph, space)

    def report(self, run_dir: str, arch: Architecture, metrics: dict[str, Any]) -> list[str]:
        return graph_section(run_dir, arch.extra["blocks"], "the chosen architecture")


register_kind(BlocksKind())
