"""NASRec's candidates: a block graph plus one embedding dim per table (our extension), sampled, mutated
and hashed.

Sampling is NASRec's any-path macro / single-operator micro rule: block j reads 1 + Binomial(min(j-1, 3),
0.5) distinct earlier nodes on each side (uniformly chosen), one dense and one sparse op, a width, a token
count and the two merger flags, all uniform; whether the final layer reads the last block's sparse output
is a fair coin (ours); dims are uniform over the candidates. The "full path" (the supernet warm-up) reads
every earlier node (the last four, at most) at the largest sizes with both mergers on, an op per block
still drawn at random (one op per block is the space).

`dlrm_graph` and `dcn_graph` are the hand-built models as points of the space (the run's `model.*`
sizes); the evolution's first population includes them (`search.nasrec.seed_graphs`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from torchrec_aes.models.block_graph import Block, BlockGraph, BlockSpace, live_key


@dataclass(frozen=True)
class Candidate:
    """One architecture of the search: the blocks and the per-table dims (hashable, serialisable)."""

    graph: BlockGraph
    dims: tuple[int, ...]

    def key(self) -> str:
        """Identifies what the candidate computes: the live part of its graph (`models.blocks.live_key`;
        graphs that differ only in blocks that do not reach the output are one candidate) and its dims."""
        return f"{live_key(self.graph)}-{'.'.join(str(d) for d in self.dims)}"

    def to_dict(self) -> dict:
        return {"blocks": self.graph.to_dict(), "dims": list(self.dims)}


def _inputs(rng: random.Random, j: int) -> tuple[int, ...]:
    n = 1 + sum(rng.random() < 0.5 for _ in range(min(j - 1, 3)))
    return tuple(sorted(rng.sample(range(j), n)))


def random_block(rng: random.Random, j: int, space: BlockSpace) -> Block:
    """Block j (1-based) drawn by the any-path / single-operator rule."""
    return Block(
        dense_in=_inputs(rng, j),
        sparse_in=_inputs(rng, j),
        dense_op=rng.choice(space.dense_ops),
        sparse_op=rng.choice(space.sparse_ops),
        width=rng.choice(space.widths),
        tokens=rng.choice(space.tokens),
        merge=rng.random() < 0.5,
        fm=rng.random() < 0.5,
        norm=rng.choice(space.norms),
    )


def random_graph(rng: random.Random, space: BlockSpace) -> BlockGraph:
    blocks = tuple(random_block(rng, j, space) for j in range(1, space.num_blocks + 1))
    return BlockGraph(blocks, rng.random() < 0.5)


def full_graph(rng: random.Random, space: BlockSpace) -> BlockGraph:
    """The warm-up path: the last four earlier nodes (all of them early on), largest sizes, both mergers."""
    blocks = []
    for j in range(1, space.num_blocks + 1):
        inputs = tuple(range(max(0, j - 4), j))
        blocks.append(
            Block(
                inputs,
                inputs,
                rng.choice(space.dense_ops),
                rng.choice(space.sparse_ops),
                space.max_width,
                space.max_tokens,
                True,
                True,
                rng.choice(space.norms),
            )
        )
    return BlockGraph(tuple(blocks), True)


def _snap(width: int, space: BlockSpace) -> int:
    """The space's width nearest to `width` (the smaller on a tie)."""
    return min(space.widths, key=lambda w: (abs(w - width), w))


def chain_graph(space: BlockSpace, layers: list[tuple[str, int]], name: str) -> BlockGraph:
    """A chain of dense layers as a graph: layer i (a dense op and a width, snapped to the space's
    nearest) reads the one before it (the first reads node 0); the last layer is block N and the blocks
    between are dead (they read node 0 and nothing reads them); every sparse op is dead, the final layer
    reads the last block's dense output only, and no block normalises if the space allows that."""
    n = space.num_blocks
    if not 1 <= len(layers) <= n:
        raise ValueError(f"{name} needs {len(layers)} blocks; search.nasrec.num_blocks is {n}")
    for op, _ in layers:
        if op not in space.dense_ops:
            raise ValueError(f"{name} needs the dense op '{op}', not in the '{space.space}' space")

    norm = min(space.norms)  # without LayerNorm where the space allows, as the hand-built models

    def block(op: str, width: int, reads: int) -> Block:
        return Block(
            (reads,),
            (0,),
            op,
            space.sparse_ops[0],
            _snap(width, space),
            min(space.tokens),
            False,
            False,
            norm,
        )

    blocks = [block(op, w, j) for j, (op, w) in enumerate(layers[:-1])]
    blocks += [block(space.dense_ops[0], min(space.widths), 0)] * (n - len(layers))
    blocks.append(block(layers[-1][0], layers[-1][1], len(layers) - 1))
    return BlockGraph(tuple(blocks), False)


def dlrm_graph(space: BlockSpace, dense_arch: list[int], over_arch: list[int]) -> BlockGraph:
    """DLRM as a graph: the bottom MLP's hidden layers (`fc`), `interact` (its dense projection is the
    bottom MLP's last layer; its width the top MLP's first), the top MLP's other layers (`fc`)."""
    top = over_arch or [max(space.widths)]
    layers = [("fc", w) for w in dense_arch[:-1]] + [("interact", top[0])] + [("fc", w) for w in top[1:]]
    return chain_graph(space, layers, "DLRM")


def dcn_graph(space: BlockSpace, over_arch: list[int]) -> BlockGraph:
    """DCN as a graph: `cross` over the raw dense features and the embeddings (its width: the top MLP's
    first layer), the top MLP's other layers (`fc`)."""
    top = over_arch or [max(space.widths)]
    return chain_graph(space, [("cross", top[0])] + [("fc", w) for w in top[1:]], "DCN")


def random_candidate(
    rng: random.Random,
    space: BlockSpace,
    num_tables: int,
    candidates: list[int],
    fixed_dims: list[int] | None,
) -> Candidate:
    dims = (
        tuple(fixed_dims)
        if fixed_dims is not None
        else tuple(rng.choice(candidates) for _ in range(num_tables))
    )
    return Candidate(random_graph(rng, space), dims)


MUTABLE = ("dense_in", "sparse_in", "dense_op", "sparse_op", "width", "tokens", "merge", "fm", "norm")
"""Block fields a mutation may redraw (besides the graph's `final_sparse` and, with dim search, a dim)."""


def mutate(
    rng: random.Random,
    cand: Candidate,
    space: BlockSpace,
    candidates: list[int],
    mutations: int,
    search_dims: bool,
) -> Candidate:
    """`mutations` random edits: one field of one block redrawn, or the graph's `final_sparse` flipped
    (one field more), or, with `search_dims`, one table's dim (with probability tables / (tables +
    fields)); the result differs from `cand` when it can."""
    graph, dims = list(cand.graph.blocks), list(cand.dims)
    final_sparse = cand.graph.final_sparse
    for _ in range(mutations):
        fields = len(graph) * len(MUTABLE) + 1
        if search_dims and len(candidates) > 1 and rng.random() < len(dims) / (len(dims) + fields):
            t = rng.randrange(len(dims))
            dims[t] = rng.choice([c for c in candidates if c != dims[t]])
            continue
        if rng.random() < 1 / fields:
            final_sparse = not final_sparse
            continue
        j = rng.randrange(len(graph))
        field = rng.choice(MUTABLE)
        for _ in range(20):  # redraw until the field changes (block 1 can only read node 0)
            value = getattr(random_block(rng, j + 1, space), field)
            if value != getattr(graph[j], field):
                break
        graph[j] = replace(graph[j], **{field: value})
    return Candidate(BlockGraph(tuple(graph), final_sparse), tuple(dims))


def cost(cand: Candidate, space: BlockSpace, num_features: int, num_dense: int) -> float:
    """Multiply-adds per row of `cand`'s fixed model (a proxy of its scoring time, for spreading a
    generation's candidates over the ranks)."""
    d, m = space.token_dim, space.merger_tokens
    dense_w, tokens_w = [num_dense], [num_features]
    total = float(sum(cand.dims) * d)  # token projections
    for b in cand.graph.blocks:
        din = sum(dense_w[i] for i in b.dense_in)
        tin = sum(tokens_w[i] for i in b.sparse_in)
        if b.dense_op == "fc":
            total += din * b.width
        elif b.dense_op in ("sum", "gating"):
            total += 2 * din * b.width
        elif b.dense_op == "interact":
            f = num_features + 1
            total += din * d + f * f * d / 2 + (d + f * (f - 1) / 2) * b.width
        elif b.dense_op == "cross":
            n = din + num_features * d
            total += 2 * n * space.cross_rank * space.cross_layers + n * b.width
        else:
            k = space.compressed_tokens
            total += din * d + k * tin * d + (k + 1) ** 2 * d + (k + 1) * k / 2 * b.width
        total += b.tokens * tin * d
        if b.sparse_op == "attention":
            total += 2 * b.tokens**2 * d + 6 * b.tokens * d * d
        total += (d * b.width if b.fm else 0) + (b.width * m * d if b.merge else 0)
        dense_w.append(b.width)
        tokens_w.append(b.tokens + m * b.merge)
    return total + dense_w[-1] + (tokens_w[-1] * d if cand.graph.final_sparse else 0)
