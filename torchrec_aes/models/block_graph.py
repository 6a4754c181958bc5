"""The block graphs of NASRec's search space, as data: a `Block` (ops, widths, inputs, mergers), a
`BlockSpace` (op sets, widths, token counts), a `BlockGraph` (N blocks), their checks, and liveness (which
parts of a graph reach the final layer; `live_key` names a graph by its live part). The modules that run
a graph are in `models/blocks.py`; see its docstring for what each op computes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

DENSE_OPS = ("fc", "sum", "gating", "dot", "interact", "cross")
SPARSE_OPS = ("efc", "attention")
SPACES = {
    "full": (DENSE_OPS, SPARSE_OPS),
    "small": (("fc", "dot", "interact", "cross"), ("efc",)),
    "paper_full": (("fc", "sum", "gating", "dot"), SPARSE_OPS),
    "paper_small": (("fc", "dot"), ("efc",)),
}
"""NASRec's two spaces, "full" (the code's `xlarge`) and "small" (`autoctr`), each with two dense ops of
ours that read the raw embeddings (node 0's tokens) as DLRM and DCN do -- `interact` (DLRM's dot
interaction) and `cross` (DCN's cross layers) -- so that DLRM and DCN are points of the space;
"paper_full" and "paper_small" are the paper's op sets exactly."""

TOKEN_INITS = ("identity", "random")


@dataclass(frozen=True)
class Block:
    """One block of a graph (nodes are numbered from 0 = the input; block j is node j).

    Args:
        dense_in: earlier nodes whose dense outputs it reads (sorted, 1-4 of them).
        sparse_in: earlier nodes whose sparse outputs it reads (sorted, 1-4 of them).
        dense_op: one of `DENSE_OPS`.
        sparse_op: one of `SPARSE_OPS`.
        width: columns of its dense output.
        tokens: tokens of its sparse op's output.
        merge: append its dense output, projected to `merger_tokens` tokens, to its sparse output.
        fm: add an FM term of its sparse output (projected to `width`) to its dense output.
        norm: LayerNorm on its ops' outputs (the paper's, always on; ours: a choice of the space,
            `BlockSpace.layer_norm`); a transformer layer keeps its own two either way.
    """

    dense_in: tuple[int, ...]
    sparse_in: tuple[int, ...]
    dense_op: str
    sparse_op: str
    width: int
    tokens: int
    merge: bool
    fm: bool
    norm: bool = True


NORMS = {"always": (True,), "never": (False,), "searched": (True, False)}
"""`BlockSpace.layer_norm`: the values a block's `norm` may take."""


@dataclass(frozen=True)
class BlockSpace:
    """What the search may choose and the fixed sizes every model of the space shares.

    Args:
        num_blocks: N.
        space: "full" or "small" (the ops allowed, `SPACES`).
        widths: dense widths.
        tokens: sparse token counts.
        token_dim: width of a token (every table's embedding is projected to it).
        merger_tokens: tokens of the dense -> sparse merger.
        heads: attention heads (divides `token_dim`).
        dot_tokens: tokens the `dot` op compresses its sparse inputs to (0 = round(sqrt(2 max(widths))),
            as NASRec's code).
        cross_layers: low-rank cross layers of the `cross` op (DCN's; the run's `model.cross_layers`).
        cross_rank: their rank (the run's `model.cross_rank`).
        layer_norm: "always" (every block normalises its ops' outputs: the paper's), "never", or "searched"
            (each block's `norm` is a choice of the search).
        token_init: initial token projections: "identity" (node 0's tokens start as the embeddings) or
            "random" (PyTorch's default for a linear layer).
    """

    num_blocks: int = 7
    space: str = "full"
    widths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 768, 1024)
    tokens: tuple[int, ...] = (16, 32, 48, 64)
    token_dim: int = 16
    merger_tokens: int = 8
    heads: int = 8
    dot_tokens: int = 0
    cross_layers: int = 3
    cross_rank: int = 16
    layer_norm: str = "always"
    token_init: str = "random"

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"space: '{self.space}' is not one of {', '.join(SPACES)}")
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks: {self.num_blocks}; expected >= 1")
        for name in ("widths", "tokens"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values):
                raise ValueError(f"{name}: {list(values)}; expected a non-empty list of positive sizes")
        if self.layer_norm not in NORMS:
            raise ValueError(f"layer_norm: '{self.layer_norm}' is not one of {', '.join(NORMS)}")
        if self.token_init not in TOKEN_INITS:
            raise ValueError(f"token_init: '{self.token_init}' is not one of {', '.join(TOKEN_INITS)}")
        if self.cross_layers < 0 or self.cross_rank < 1:
            raise ValueError(
                f"cross_layers {self.cross_layers}, cross_rank {self.cross_rank}: expected >= 0 and >= 1"
            )
        if self.token_dim < 1 or self.merger_tokens < 1 or self.heads < 1 or self.token_dim % self.heads:
            raise ValueError(
                f"token_dim {self.token_dim}, merger_tokens {self.merger_tokens}, heads {self.heads}: "
                "expected positive sizes with heads dividing token_dim"
            )

    @property
    def dense_ops(self) -> tuple[str, ...]:
        return SPACES[self.space][0]

    @property
    def sparse_ops(self) -> tuple[str, ...]:
        return SPACES[self.space][1]

    @property
    def norms(self) -> tuple[bool, ...]:
        return NORMS[self.layer_norm]

    @property
    def max_width(self) -> int:
        return max(self.widths)

    @property
    def max_tokens(self) -> int:
        return max(self.tokens)

    @property
    def compressed_tokens(self) -> int:
        return self.dot_tokens or round(math.sqrt(2 * self.max_width))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["widths"], out["tokens"] = list(self.widths), list(self.tokens)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "space") -> BlockSpace:
        try:
            data = dict(data)
            data["widths"] = tuple(int(v) for v in data.get("widths", cls.widths))
            data["tokens"] = tuple(int(v) for v in data.get("tokens", cls.tokens))
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None


@dataclass(frozen=True)
class BlockGraph:
    """The blocks of one architecture: a serialisable, hashable value (with the table dims, the search's
    candidate; see `search/nasrec/space.py` for sampling and mutation).

    Args:
        blocks: the N blocks.
        final_sparse: the final layer reads the last block's flattened sparse output as well as its dense
            output (NASRec's); false: its dense output only (as DLRM's and DCN's top MLPs do).
    """

    blocks: tuple[Block, ...]
    final_sparse: bool = True

    def to_dict(self) -> dict[str, Any]:
        blocks = [
            {**asdict(b), "dense_in": list(b.dense_in), "sparse_in": list(b.sparse_in)} for b in self.blocks
        ]
        return {"blocks": blocks, "final_sparse": self.final_sparse}

    @classmethod
    def from_dict(cls, data: Any, space: BlockSpace, source: str = "blocks") -> BlockGraph:
        """Reads `to_dict()` output (or a bare list of blocks, the earlier form: `final_sparse` true);
        every error is one line naming `source`, the block and the key."""
        final_sparse = True
        if isinstance(data, dict):
            if set(data) != {"blocks", "final_sparse"}:
                raise ValueError(f"{source}: has keys {sorted(data)}; expected ['blocks', 'final_sparse']")
            if not isinstance(data["final_sparse"], bool):
                raise ValueError(f"{source}.final_sparse: {data['final_sparse']!r}; expected true or false")
            final_sparse, data = data["final_sparse"], data["blocks"]
            source = f"{source}.blocks"
        if not isinstance(data, list) or not data:
            raise ValueError(f"{source}: expected a non-empty list of blocks")
        keys = set(Block.__dataclass_fields__)
        blocks = []
        for j, b in enumerate(data, start=1):
            where = f"{source}[{j - 1}]"
            # ("norm" may be missing: files written before it existed normalise every block)
            if not isinstance(b, dict) or not keys - {"norm"} <= set(b) <= keys:
                got = sorted(b) if isinstance(b, dict) else repr(b)
                raise ValueError(f"{where}: has keys {got}; expected {sorted(keys)}")
            for key in ("dense_in", "sparse_in"):
                if not isinstance(b[key], list) or not all(_is_int(i) for i in b[key]):
                    raise ValueError(f"{where}.{key}: {b[key]!r}; expected a list of node indices")
            for key in ("width", "tokens"):
                if not _is_int(b[key]):
                    raise ValueError(f"{where}.{key}: {b[key]!r}; expected an integer")
            b = {"norm": True, **b}
            for key in ("merge", "fm", "norm"):
                if not isinstance(b[key], bool):
                    raise ValueError(f"{where}.{key}: {b[key]!r}; expected true or false")
            block = Block(
                tuple(b["dense_in"]),
                tuple(b["sparse_in"]),
                str(b["dense_op"]),
                str(b["sparse_op"]),
                b["width"],
                b["tokens"],
                b["merge"],
                b["fm"],
                b["norm"],
            )
            problem = check_block(block, j, space)
            if problem:
                raise ValueError(f"{where}: {problem}")
            blocks.append(block)
        return cls(tuple(blocks), final_sparse)

    def key(self) -> str:
        """A stable hash of the graph (16 hex digits)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_block(b: Block, j: int, space: BlockSpace) -> str:
    """'' if block `b` is valid as node `j` of `space`, else what is wrong (one line)."""
    for name, inputs in (("dense_in", b.dense_in), ("sparse_in", b.sparse_in)):
        if not 1 <= len(inputs) <= 4 or list(inputs) != sorted(set(inputs)):
            return f"{name} {list(inputs)}: expected 1-4 distinct node indices in increasing order"
        if inputs[0] < 0 or inputs[-1] >= j:
            return f"{name} {list(inputs)}: block {j} can only read nodes 0..{j - 1}"
    if b.dense_op not in space.dense_ops:
        return f"dense_op '{b.dense_op}' is not one of {', '.join(space.dense_ops)} ({space.space} space)"
    if b.sparse_op not in space.sparse_ops:
        return f"sparse_op '{b.sparse_op}' is not one of {', '.join(space.sparse_ops)} ({space.space} space)"
    if b.width not in space.widths:
        return f"width {b.width} is not one of {list(space.widths)}"
    if b.tokens not in space.tokens:
        return f"tokens {b.tokens} is not one of {list(space.tokens)}"
    if b.norm not in space.norms:
        return f"norm {str(b.norm).lower()} is not allowed with layer_norm '{space.layer_norm}'"
    return ""


@dataclass(frozen=True)
class Live:
    """What of a block a fixed model computes: its dense op (its dense output is read, or merged into its
    read sparse output), its sparse op (its sparse output is read, or feeds the FM term of a computed dense
    output), and whether its FM term and merger are used."""

    dense: bool
    sparse: bool
    fm: bool
    merge: bool


def liveness(graph: BlockGraph) -> list[Live]:
    """Per block, what reaches the final layer (which reads the last block's dense output, and its sparse
    output if `graph.final_sparse`). A part that does not is dead: it cannot change the output, and a
    fixed model neither builds nor runs it (its parameters would never get a gradient). Node 0's tokens
    are always computed (`interact` and `cross` read them)."""
    n = len(graph.blocks)
    dense_read, sparse_read = {n}, ({n} if graph.final_sparse else set())
    out: list[Live] = []
    for j in range(n, 0, -1):
        b = graph.blocks[j - 1]
        merge = j in sparse_read and b.merge
        dense = j in dense_read or merge
        fm = dense and b.fm
        sparse = j in sparse_read or fm
        if dense:
            dense_read.update(b.dense_in)
            if b.dense_op == "dot":
                sparse_read.update(b.sparse_in)
        if sparse:
            sparse_read.update(b.sparse_in)
        out.append(Live(dense, sparse, fm, merge))
    return out[::-1]


ALL_LIVE = Live(True, True, True, True)


def live_key(graph: BlockGraph) -> str:
    """A hash of what of `graph` reaches the output (`liveness`): two graphs that differ only in dead parts
    compute the same function and share this key (16 hex digits)."""
    parts: list[Any] = [graph.final_sparse]
    for b, live in zip(graph.blocks, liveness(graph), strict=True):
        reads_tokens = live.sparse or (live.dense and b.dense_op == "dot")
        parts.append(
            [
                list(b.dense_in) if live.dense else None,
                b.dense_op if live.dense else None,
                b.width if live.dense else None,
                list(b.sparse_in) if reads_tokens else None,
                b.sparse_op if live.sparse else None,
                b.tokens if live.sparse else None,
                live.merge and b.merge,
                live.fm and b.fm,
                b.norm,
            ]
        )
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
