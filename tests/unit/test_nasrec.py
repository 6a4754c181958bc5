"""NASRec: the block-graph model (a fixed BlockNet with weights cut from the supernet computes the
supernet's output for its path, over a real TorchRec EBC), the fixed model's modules, the supernet's
gradients in training, the graph file format, sampling and mutation of candidates, aging evolution on a
toy problem, the supernet's learning rate and path sampling, the subnet scorer, the config checks, and the
`blocks` architecture kind through save/load."""

from __future__ import annotations

import dataclasses
import math
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_aes.architecture import Architecture, kind_of
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.models.block_graph import (
    DENSE_OPS,
    SPARSE_OPS,
    Block,
    BlockGraph,
    BlockSpace,
    Live,
    check_block,
    live_key,
    liveness,
)
from torchrec_aes.models.blocks import BlockNet, blocks_architecture, subnet_state
from torchrec_aes.planning.memory import arch_bytes
from torchrec_aes.search.nasrec.config import NASRecConfig, check_config
from torchrec_aes.search.nasrec.evolution import EvolutionResult, evolve, mutations_at
from torchrec_aes.search.nasrec.space import (
    Candidate,
    dcn_graph,
    dlrm_graph,
    full_graph,
    mutate,
    random_candidate,
    random_graph,
)
from torchrec_aes.search.nasrec.supernet import SubnetScorer, SupernetHooks, cosine_lr
from torchrec_aes.supernet.elastic import ElasticEmbeddingBagCollection

pytestmark = pytest.mark.usefixtures("single_thread")

CANDIDATES = [4, 8, 16]
ROWS = [30, 50, 20]
KEYS = [f"c{i}" for i in range(len(ROWS))]
NUM_DENSE = 3
BATCH = 12


def _space(name: str = "full", num_blocks: int = 4, **options) -> BlockSpace:
    return BlockSpace(
        num_blocks=num_blocks,
        space=name,
        widths=(8, 16, 32),
        tokens=(4, 8),
        token_dim=8,
        merger_tokens=2,
        heads=2,
        **options,
    )


def _schema() -> Schema:
    return Schema(
        [f"d{i}" for i in range(NUM_DENSE)], [SparseFeature(k, r) for k, r in zip(KEYS, ROWS, strict=True)]
    )


def _inputs(seed: int = 0) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """Dense features and a KJT with 0-3 ids per bag (empty bags included)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(KEYS), BATCH), generator=g)
    values = torch.cat(
        [torch.randint(0, r, (int(lengths[f].sum()),), generator=g) for f, r in enumerate(ROWS)]
    )
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=KEYS, values=values, lengths=lengths.reshape(-1).to(torch.int32)
    )
    return torch.randn(BATCH, NUM_DENSE, generator=g), kjt


def _supernet(space: BlockSpace, seed: int = 0) -> tuple[BlockNet, ElasticEmbeddingBagCollection]:
    """A supernet over an elastic wrapper of a plain TorchRec EBC at d_max = 16, every weight (LayerNorm
    included) perturbed so that no parameter has a symmetric default value."""
    torch.manual_seed(seed)
    ebc = EmbeddingBagCollection(tables=Architecture.uniform(_schema(), max(CANDIDATES)).to_ebc_configs())
    elastic = ElasticEmbeddingBagCollection(ebc, CANDIDATES)
    net = BlockNet(elastic, NUM_DENSE, space, None)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net, elastic


def _dense_params(net: BlockNet) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in net.named_parameters() if not n.startswith("sparse_arch.")}


def _standalone(supernet: BlockNet, elastic: ElasticEmbeddingBagCollection, cand: Candidate) -> BlockNet:
    """The fixed model of `cand` over its own EBC at the candidate's dims: table weights are the first d
    columns of the supernet's, dense weights `subnet_state`."""
    ebc = EmbeddingBagCollection(tables=Architecture.from_dims(_schema(), list(cand.dims)).to_ebc_configs())
    with torch.no_grad():
        for name, d in zip(elastic.table_names, cand.dims, strict=True):
            ebc.embedding_bags[name].weight.copy_(elastic.ebc.embedding_bags[name].weight[:, :d])
    fixed = BlockNet(ebc, NUM_DENSE, supernet.space, cand.graph)
    missing, unexpected = fixed.load_state_dict(subnet_state(supernet, fixed), strict=False)
    assert not unexpected and all(k.startswith("sparse_arch.") for k in missing), (missing, unexpected)
    return fixed


# ---------------------------------------------------------------------------------------------------------
# 1. The supernet and the fixed model
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "space_name, options",
    [("full", {}), ("small", {}), ("full", {"layer_norm": "searched", "token_init": "identity"})],
)
def test_a_fixed_blocknet_cut_from_the_supernet_computes_the_supernets_output(space_name, options):
    space = _space(space_name, **options)
    supernet, elastic = _supernet(space, seed=1)
    seen: dict[str, set] = {
        "dense_op": set(),
        "sparse_op": set(),
        "merge": set(),
        "fm": set(),
        "n_in": set(),
        "norm": set(),
        "final_sparse": set(),
    }
    cands = [random_candidate(random.Random(s), space, len(KEYS), CANDIDATES, None) for s in range(20)]
    rng = random.Random(99)
    cands.append(Candidate(full_graph(rng, space), (16, 16, 16)))  # the warm-up path, no masks at all
    cands.append(Candidate(full_graph(rng, space), (4, 8, 16)))
    cands.append(Candidate(dlrm_graph(space, [16, 8], [32, 16]), (8, 16, 4)))  # the hand-built models
    cands.append(Candidate(dcn_graph(space, [32, 8]), (16, 4, 8)))
    for i, cand in enumerate(cands):
        for b in cand.graph.blocks:
            seen["dense_op"].add(b.dense_op)
            seen["sparse_op"].add(b.sparse_op)
            seen["merge"].add(b.merge)
            seen["fm"].add(b.fm)
            seen["norm"].add(b.norm)
            seen["n_in"].update({len(b.dense_in), len(b.sparse_in)})
        seen["final_sparse"].add(cand.graph.final_sparse)
        fixed = _standalone(supernet, elastic, cand)
        fixed.eval()
        supernet.eval()
        supernet.set_graph(cand.graph)
        elastic.set_dims(list(cand.dims))
        dense, kjt = _inputs(seed=i)
        with torch.no_grad():  # (attention may take PyTorch's inference fast path here)
            want = supernet(dense, kjt)
            got = fixed(dense, kjt)
        assert want.shape == got.shape == (BATCH,)
        # (rtol: without LayerNorm, outputs grow large enough for float32 rounding to exceed 1e-5)
        torch.testing.assert_close(
            got, want, rtol=1e-5, atol=1e-5, msg=lambda m, c=cand: f"{c.to_dict()}\n{m}"
        )
        # The same in training mode with autograd on (what supernet training computes; no dropout).
        supernet.train()
        fixed.train()
        torch.testing.assert_close(fixed(dense, kjt), supernet(dense, kjt), rtol=1e-5, atol=1e-5)
    # The candidates covered every op of the space and both values of each merger flag.
    assert seen["dense_op"] == set(space.dense_ops), seen
    assert seen["sparse_op"] == set(space.sparse_ops), seen
    assert seen["merge"] == {True, False} and seen["fm"] == {True, False}, seen
    assert seen["n_in"] == {1, 2, 3, 4}, seen  # single and multiple inputs (binary ops' both branches)
    assert seen["norm"] == set(space.norms) and seen["final_sparse"] == {True, False}, seen
    if space_name == "full":
        assert set(space.dense_ops) == set(DENSE_OPS) and set(space.sparse_ops) == set(SPARSE_OPS)


def test_dlrm_and_dcn_are_chains_of_the_space_with_their_layers_live():
    space = _space("small", num_blocks=5)
    dlrm = dlrm_graph(space, [32, 8], [16, 8])
    # bottom fc 32 (block 1) -> interact, width 16 (block 2) -> fc 8 (block 5); blocks 3-4 are dead.
    assert [b.dense_op for b in dlrm.blocks] == ["fc", "interact", "fc", "fc", "fc"]
    assert [b.width for b in dlrm.blocks] == [32, 16, 8, 8, 8]
    assert [b.dense_in for b in dlrm.blocks] == [(0,), (1,), (0,), (0,), (2,)]
    assert not dlrm.final_sparse
    assert [(live.dense, live.sparse) for live in liveness(dlrm)] == [
        (True, False),
        (True, False),
        (False, False),
        (False, False),
        (True, False),
    ]
    dcn = dcn_graph(space, [32, 16])
    assert [b.dense_op for b in dcn.blocks][0] == "cross" and dcn.blocks[-1].dense_in == (1,)
    assert [live.dense for live in liveness(dcn)] == [True, False, False, False, True]
    for graph in (dlrm, dcn):
        assert BlockGraph.from_dict(graph.to_dict(), space) == graph
    # widths snap to the space's nearest; too few blocks or a space without the op is an error
    assert [b.width for b in dcn_graph(space, [30, 9]).blocks][::4] == [32, 8]
    with pytest.raises(ValueError, match="DLRM needs 3 blocks; search.nasrec.num_blocks is 2"):
        dlrm_graph(_space("small", num_blocks=2), [32, 8], [16, 8])
    with pytest.raises(ValueError, match="DCN needs the dense op 'cross', not in the 'paper_small' space"):
        dcn_graph(_space("paper_small"), [16])
    # The DCN block holds DCN's low-rank cross layers over [dense, flattened embeddings].
    net = BlockNet(
        EmbeddingBagCollection(tables=Architecture.uniform(_schema(), 8).to_ebc_configs()),
        NUM_DENSE,
        space,
        dcn,
    )
    cross = net.blocks[0].dense["cross"]["cross"]
    n = NUM_DENSE + len(KEYS) * space.token_dim
    assert cross.u.shape == (space.cross_layers, space.cross_rank, n) and cross.v.shape[1] == n
    assert net.final.in_features == 16  # the last block's dense output only
    dense, kjt = _inputs()
    assert net(dense, kjt).shape == (BATCH,)


def test_identity_token_init_starts_node_0_at_the_embeddings_and_no_norm_has_no_parameters():
    space = _space("full", layer_norm="never", token_init="identity")
    torch.manual_seed(0)
    arch = Architecture.from_dims(_schema(), [4, 8, 16])  # below, at and above token_dim 8
    net = BlockNet(EmbeddingBagCollection(tables=arch.to_ebc_configs()), NUM_DENSE, space, None)
    pooled = {k: torch.randn(5, d) for k, d in zip(KEYS, [4, 8, 16], strict=True)}
    for k, x in pooled.items():
        token = net.token_proj[k](x)
        d = min(x.shape[1], 8)
        torch.testing.assert_close(token[:, :d], x[:, :d])
        assert float(token[:, d:].abs().sum()) == 0.0
    # A block without normalisation holds no LayerNorm (a fixed model: nothing that gets no gradient).
    fixed = BlockNet(
        EmbeddingBagCollection(tables=arch.to_ebc_configs()),
        NUM_DENSE,
        space,
        random_graph(random.Random(0), space),
    )
    assert not [
        n for n, _ in fixed.blocks.named_parameters() if "ln." in n and "attn" not in n and "ffn" not in n
    ]
    assert any(n.endswith(".ln.weight") for n, _ in net.blocks.named_parameters())  # the supernet: both
    default = BlockNet(EmbeddingBagCollection(tables=arch.to_ebc_configs()), NUM_DENSE, _space("full"), None)
    assert any(n.endswith(".ln.weight") for n, _ in default.blocks.named_parameters())
    assert not torch.equal(default.token_proj["c1"].weight, torch.eye(8))


def test_the_fixed_model_holds_exactly_the_modules_of_its_chosen_ops():
    space = _space("full")
    supernet, elastic = _supernet(space)
    super_dense = sum(p.numel() for p in _dense_params(supernet).values())
    for s in range(8):
        cand = random_candidate(random.Random(s), space, len(KEYS), CANDIDATES, None)
        fixed = _standalone(supernet, elastic, cand)
        assert sum(p.numel() for p in _dense_params(fixed).values()) < super_dense
        assert sum(p.numel() for p in fixed.parameters()) < sum(p.numel() for p in supernet.parameters())
        for b, mod, live in zip(cand.graph.blocks, fixed.blocks, liveness(cand.graph), strict=True):
            # Only the parts that reach the output are built (`liveness`); the last block is fully live.
            assert set(mod.dense) == ({b.dense_op} if live.dense else set())
            assert set(mod.sparse) == ({b.sparse_op} if live.sparse else set())
            assert hasattr(mod, "merge") == (b.merge and live.merge) and hasattr(mod, "fm") == (
                b.fm and live.fm
            )
            names = {".".join(n.split(".")[:2]) for n, _ in mod.named_parameters()}
            expected = {f"dense.{b.dense_op}"} if live.dense else set()
            expected |= {f"sparse.{b.sparse_op}"} if live.sparse else set()
            expected |= {"merge.linear", "merge.ln"} if b.merge and live.merge else set()
            expected |= {"fm.linear", "fm.ln"} if b.fm and live.fm else set()
            assert names == expected, (b, names)
            if live.sparse:
                assert ("attn" in mod.sparse[b.sparse_op]) == (b.sparse_op == "attention")
            if live.dense and b.dense_op == "fc":
                assert set(mod.dense["fc"]) == {"linear", "ln"}
            if live.dense:
                assert mod.dense[b.dense_op]["ln"].normalized_shape == (b.width,)
        last, final_sparse = cand.graph.blocks[-1], cand.graph.final_sparse
        assert liveness(cand.graph)[-1] == Live(
            True, final_sparse or last.fm, last.fm, final_sparse and last.merge
        )
    # Training a fixed model gives every one of its parameters a gradient (no dead parameters, whose
    # missing optimizer state broke resuming a checkpoint of the final pick).
    for s in range(20):
        cand = random_candidate(random.Random(100 + s), space, len(KEYS), CANDIDATES, None)
        fixed = _standalone(supernet, elastic, cand)
        fixed.train()
        fixed.zero_grad()
        dense, kjt = _inputs(s)
        fixed(dense, kjt).sum().backward()
        missing = [n for n, p in fixed.named_parameters() if p.grad is None]
        assert not missing, (cand.graph, missing)
    for mod in supernet.blocks:  # the supernet: every op of the space, both mergers
        assert set(mod.dense) == set(DENSE_OPS) and set(mod.sparse) == set(SPARSE_OPS)
        assert hasattr(mod, "merge") and hasattr(mod, "fm")


def test_a_fixed_model_refuses_a_graph_of_the_wrong_length_and_a_new_path():
    space = _space("full")
    supernet, elastic = _supernet(space)
    graph = random_graph(random.Random(0), space)
    with pytest.raises(ValueError, match="3 blocks; the space has 4"):
        BlockNet(elastic, NUM_DENSE, space, BlockGraph(graph.blocks[:3]))
    with pytest.raises(ValueError, match="3 blocks; the space has 4"):
        supernet.set_graph(BlockGraph(graph.blocks[:3]))
    fixed = _standalone(supernet, elastic, Candidate(graph, (4, 4, 4)))
    with pytest.raises(ValueError, match="a fixed model has one graph"):
        fixed.set_graph(graph)
    dense, kjt = _inputs()
    with pytest.raises(ValueError, match="set_graph"):
        _supernet(space)[0](dense, kjt)  # a supernet without a path


def test_the_supernet_in_training_gives_every_dense_parameter_a_gradient():
    # DMP's DDP runs with static_graph=True: every parameter must be in every step's graph.
    space = _space("full")
    supernet, elastic = _supernet(space)
    supernet.train()
    dense_params = _dense_params(supernet)
    # A path that leaves most of the supernet unused: one input per block, small sizes, no mergers.
    narrow = BlockGraph(
        tuple(Block((j - 1,), (0,), "fc", "efc", 8, 4, False, False) for j in range(1, space.num_blocks + 1))
    )
    for graph, dims in ((narrow, [4, 4, 4]), (random_graph(random.Random(3), space), [8, 16, 4])):
        supernet.zero_grad(set_to_none=True)
        supernet.set_graph(graph)
        elastic.set_dims(dims)
        dense, kjt = _inputs()
        supernet(dense, kjt).sum().backward()
        no_grad = [n for n, p in dense_params.items() if p.grad is None]
        assert not no_grad, no_grad
        # ... and the unused ops get exactly zero, the used ones something.
        used = f"blocks.0.dense.{graph.blocks[0].dense_op}."
        assert any(float(p.grad.abs().sum()) > 0 for n, p in dense_params.items() if n.startswith(used))
        if graph is narrow:
            unused = [p for n, p in dense_params.items() if n.startswith("blocks.0.dense.gating.")]
            assert unused and all(float(p.grad.abs().sum()) == 0 for p in unused)


# ---------------------------------------------------------------------------------------------------------
# 2. The graph format
# ---------------------------------------------------------------------------------------------------------


def test_block_graph_round_trips_through_dicts_and_its_key_is_stable():
    space = _space("full")
    keys = set()
    for s in range(30):
        graph = random_graph(random.Random(s), space)
        data = graph.to_dict()
        assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain YAML values
        back = BlockGraph.from_dict(yaml.safe_load(yaml.safe_dump(data)), space)
        assert back == graph and back.key() == graph.key()
        assert len(graph.key()) == 16 and int(graph.key(), 16) >= 0
        keys.add(graph.key())
    assert len(keys) == 30  # different graphs, different keys
    graph = random_graph(random.Random(0), space)
    assert graph.key() == random_graph(random.Random(0), space).key()  # a pure function of the graph
    b0 = graph.blocks[0]
    other = BlockGraph((dataclasses.replace(b0, merge=not b0.merge),) + graph.blocks[1:])
    assert other.key() != graph.key()
    cand = Candidate(graph, (4, 8, 16))
    assert cand.key() != Candidate(graph, (4, 8, 8)).key() and cand.key().startswith(live_key(graph))
    assert cand.to_dict() == {"blocks": graph.to_dict(), "dims": [4, 8, 16]}


def _bad(index: int, **change) -> list[dict]:
    data = random_graph(random.Random(5), _space("small")).to_dict()["blocks"]  # the bare-list form
    data[index].update(change)
    for k in [k for k, v in change.items() if v is None]:
        del data[index][k]
    return data


@pytest.mark.parametrize(
    "data, where, problem",
    [
        (
            _bad(1, dense_op="gating"),
            "blocks[1]",
            "dense_op 'gating' is not one of fc, dot, interact, cross (small space)",
        ),
        (
            _bad(2, sparse_op="attention"),
            "blocks[2]",
            "sparse_op 'attention' is not one of efc (small space)",
        ),
        (_bad(2, dense_in=[0, 3]), "blocks[2]", "block 3 can only read nodes 0..2"),
        (_bad(0, sparse_in=[1]), "blocks[0]", "block 1 can only read nodes 0..0"),
        (_bad(3, dense_in=[]), "blocks[3]", "expected 1-4 distinct node indices"),
        (_bad(3, sparse_in=[0, 1, 2, 3, 3]), "blocks[3]", "expected 1-4 distinct node indices"),
        (_bad(3, sparse_in=[2, 1]), "blocks[3]", "in increasing order"),
        (_bad(1, width=64), "blocks[1]", "width 64 is not one of [8, 16, 32]"),
        (_bad(1, tokens=5), "blocks[1]", "tokens 5 is not one of [4, 8]"),
        (_bad(2, width="wide"), "blocks[2].width", "expected an integer"),
        (_bad(2, merge="false"), "blocks[2].merge", "expected true or false"),
        (_bad(0, fm=None), "blocks[0]", "has keys"),
        (_bad(0, colour="red"), "blocks[0]", "has keys"),
        ([], "blocks", "expected a non-empty list of blocks"),
        ({"dense_in": [0]}, "blocks", "has keys ['dense_in']; expected ['blocks', 'final_sparse']"),
        ({"blocks": [], "final_sparse": False}, "blocks.blocks", "expected a non-empty list of blocks"),
        ({"blocks": _bad(0), "final_sparse": "no"}, "blocks.final_sparse", "expected true or false"),
        ({"blocks": _bad(1, width=64), "final_sparse": True}, "blocks.blocks[1]", "width 64 is not one"),
        (["fc"], "blocks[0]", "has keys 'fc'"),
    ],
)
def test_block_graph_from_dict_errors_are_one_line_and_name_the_block(data, where, problem):
    with pytest.raises(ValueError) as e:
        BlockGraph.from_dict(data, _space("small"), source="f.yaml: extra.blocks")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"f.yaml: extra.{where}:"), message
    assert problem in message, message


def test_block_space_checks_its_sizes_and_round_trips():
    space = _space("small")
    assert BlockSpace.from_dict(space.to_dict()) == space
    assert space.compressed_tokens == round(math.sqrt(2 * 32))
    for bad, text in (
        ({"space": "huge"}, "space: 'huge'"),
        ({"widths": []}, "widths"),
        ({"tokens": [0, 4]}, "tokens"),
        ({"heads": 3}, "heads"),
        ({"num_blocks": 0}, "num_blocks"),
        ({"colour": 1}, "colour"),
    ):
        with pytest.raises(ValueError) as e:
            BlockSpace.from_dict({**space.to_dict(), **bad}, source="x: extra.space")
        assert str(e.value).startswith("x: extra.space:") and text in str(e.value)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# 3. Sampling and mutation
# ---------------------------------------------------------------------------------------------------------


def test_random_graph_follows_the_input_count_rule():
    space = _space("full", num_blocks=6)
    counts: dict[int, set[int]] = {j: set() for j in range(1, 7)}
    for s in range(300):
        graph = random_graph(random.Random(s), space)
        for j, b in enumerate(graph.blocks, start=1):
            assert check_block(b, j, space) == "", (j, b)
            if j == 1:
                assert b.dense_in == b.sparse_in == (0,)
            for inputs in (b.dense_in, b.sparse_in):
                assert 1 <= len(inputs) <= min(j, 4)
                assert list(inputs) == sorted(set(inputs)) and inputs[-1] < j
                counts[j].add(len(inputs))
    for j in range(1, 7):  # and every allowed count occurs
        assert counts[j] == set(range(1, min(j, 4) + 1)), (j, counts[j])


def test_full_graph_reads_the_last_four_nodes_at_the_largest_sizes():
    space = _space("full", num_blocks=6)
    graph = full_graph(random.Random(0), space)
    for j, b in enumerate(graph.blocks, start=1):
        assert b.dense_in == b.sparse_in == tuple(range(max(0, j - 4), j))
        assert (b.width, b.tokens, b.merge, b.fm) == (32, 8, True, True)
        assert check_block(b, j, space) == ""


def test_random_candidate_dims_come_from_the_candidates_or_are_fixed():
    space = _space("full")
    for s in range(50):
        cand = random_candidate(random.Random(s), space, 5, CANDIDATES, None)
        assert len(cand.dims) == 5 and set(cand.dims) <= set(CANDIDATES)
        fixed = random_candidate(random.Random(s), space, 5, CANDIDATES, [8, 8, 8, 8, 8])
        assert fixed.dims == (8,) * 5


@pytest.mark.parametrize("space_name", ["full", "small"])
def test_mutations_keep_candidates_valid(space_name):
    space = _space(space_name)
    rng = random.Random(7)
    changed = 0
    parent = random_candidate(rng, space, len(KEYS), CANDIDATES, None)
    for i in range(500):
        if i % 10 == 0:
            parent = random_candidate(rng, space, len(KEYS), CANDIDATES, None)
        child = mutate(rng, parent, space, CANDIDATES, 1 + i % 3, True)
        for j, b in enumerate(child.graph.blocks, start=1):
            assert check_block(b, j, space) == "", (j, b)
        assert len(child.dims) == len(KEYS) and set(child.dims) <= set(CANDIDATES)
        assert BlockGraph.from_dict(child.graph.to_dict(), space) == child.graph
        changed += child != parent
        parent = child
    # Nearly every mutation changes the candidate (a redrawn field is drawn again until it differs; only
    # block 1's inputs cannot change). (Its key may stay: a change in a dead part computes the same.)
    assert changed >= 0.9 * 500, changed


def test_mutations_without_dim_search_never_change_the_dims():
    space = _space("full")
    rng = random.Random(1)
    fixed = (8, 8, 8)
    cand = Candidate(random_graph(rng, space), fixed)
    graphs = set()
    for i in range(300):
        cand = mutate(rng, cand, space, CANDIDATES, 1 + i % 3, False)
        assert cand.dims == fixed
        graphs.add(cand.graph.key())
    assert len(graphs) > 200  # ... while the blocks keep changing


def test_dims_are_mutated_with_dim_search_and_to_a_different_candidate():
    space = _space("full", num_blocks=1)  # 1 block x 9 fields + 1 vs 3 tables: dims are mutated often
    rng = random.Random(2)
    cand = Candidate(random_graph(rng, space), (4, 8, 16))
    dim_changes = 0
    for _ in range(300):
        child = mutate(rng, cand, space, CANDIDATES, 1, True)
        diff = [a != b for a, b in zip(child.dims, cand.dims, strict=True)]
        assert sum(diff) <= 1  # one mutation: at most one table
        if sum(diff):
            assert child.graph == cand.graph
        dim_changes += sum(diff)
    # P(dim mutation) = 3 / (3 + 9 + 1) ~ 0.23; a dim mutation always picks another candidate.
    assert 50 <= dim_changes <= 120, dim_changes


def test_a_single_mutation_changes_the_candidate_unless_nothing_can_change():
    space = _space("full", layer_norm="searched")
    rng = random.Random(0)
    same = 0
    for _ in range(300):
        cand = random_candidate(rng, space, len(KEYS), CANDIDATES, None)
        same += mutate(rng, cand, space, CANDIDATES, 1, True) == cand
    # Only block 1's inputs cannot change (it reads node 0 alone): 2 of 8 fields of 1 of 4 blocks, ~4%
    # of the block mutations.
    assert same <= 0.08 * 300, same


# ---------------------------------------------------------------------------------------------------------
# 4. Aging evolution
# ---------------------------------------------------------------------------------------------------------

TARGET = (3, 7, 1, 8, 2, 5)


class Toy(tuple):
    """A candidate of the toy problem: 6 digits."""

    def key(self) -> str:
        return ".".join(str(v) for v in self)


def _toy_fitness(c: Toy) -> float:
    return -float(sum(abs(a - b) for a, b in zip(c, TARGET, strict=True)))


def _toy_new(rng: random.Random) -> Toy:
    return Toy(rng.randrange(10) for _ in range(6))


def _toy_mutate(rng: random.Random, parent: Toy, m: int) -> Toy:
    out = list(parent)
    for _ in range(m):  # each mutation changes one coordinate by one step
        i = rng.randrange(6)
        out[i] = min(9, max(0, out[i] + rng.choice((-1, 1))))
    return Toy(out)


def _toy_fits(c: Toy) -> bool:
    return sum(c) <= 30  # a "budget" (the target's sum is 26) that rejects many candidates


def _run_toy(seed: int, generations: int = 40, **kw):
    scored: list[Toy] = []
    parents: list[tuple[Toy, int, int]] = []
    calls: list[int] = []

    def score_many(cands):
        calls.append(len(cands))
        scored.extend(cands)
        return [_toy_fitness(c) for c in cands]

    def mutate_fn(rng, parent, m):
        parents.append((parent, len(scored), m))
        return _toy_mutate(rng, parent, m)

    gens: list[int] = []
    result = evolve(
        score_many,
        kw.pop("new", _toy_new),
        mutate_fn,
        kw.pop("fits", _toy_fits),
        random.Random(seed),
        population=kw.pop("population", 16),
        sample_size=kw.pop("sample_size", 4),
        children=kw.pop("children", 4),
        generations=generations,
        mutations=kw.pop("mutations", 3),
        on_generation=lambda g, r: gens.append(g),
        **kw,
    )
    return result, scored, parents, calls, gens


def test_evolution_finds_the_toy_optimum_within_the_budget_and_never_rescores():
    result, scored, parents, calls, gens = _run_toy(seed=0)
    assert isinstance(result, EvolutionResult)
    best = max(s for _, s in result.scored)
    assert best >= -1.0, best
    assert all(_toy_fits(c) for c in scored)  # nothing over the budget was ever scored
    keys = [c.key() for c in scored]
    assert len(keys) == len(set(keys))  # no candidate scored twice
    assert [c for c, _ in result.scored] == scored and [s for _, s in result.scored] == [
        _toy_fitness(c) for c in scored
    ]
    assert calls[0] == 16 and all(n <= 4 for n in calls[1:])  # the population, then children per call
    assert gens == [-1, *range(40)]
    bpg = result.best_per_generation
    assert len(bpg) == 41 and all(a <= b for a, b in zip(bpg, bpg[1:], strict=False))
    assert bpg[-1] == best and bpg[0] == max(_toy_fitness(c) for c in scored[:16])
    assert bpg[-1] > bpg[0]  # the evolution improved on the random population
    # Aging: every parent is one of the last `population` scored candidates when it was picked.
    for parent, n, _ in parents:
        assert parent in scored[max(0, n - 16) : n]
    # Mutations per child follow `mutations_at`: 3 in the first generation, falling to 1 in the last.
    ms = [m for _, _, m in parents]
    assert ms[0] == 3 and ms[-1] == 1 and all(a >= b for a, b in zip(ms, ms[1:], strict=False))
    assert set(ms) == {1, 2, 3}
    top = result.top(3)
    assert [s for _, s in top] == sorted((s for _, s in result.scored), reverse=True)[:3]


def test_seeds_start_the_first_population_once_each_and_only_if_they_fit():
    seeds = [Toy([2, 2, 2, 2, 2, 2]), Toy([9, 9, 9, 9, 9, 9]), Toy([2, 2, 2, 2, 2, 2]), Toy([1] * 6)]
    result, scored, *_ = _run_toy(seed=0, generations=2, seeds=seeds)
    assert scored[:2] == [seeds[0], seeds[3]]  # over the budget and repeated seeds are skipped
    assert len([c for c in scored[:16] if c in seeds]) == 2 and len(scored[:16]) == 16


def test_evolution_is_a_pure_function_of_the_seed():
    a = _run_toy(seed=3, generations=10)[0]
    b = _run_toy(seed=3, generations=10)[0]
    c = _run_toy(seed=4, generations=10)[0]
    assert [(x.key(), s) for x, s in a.scored] == [(x.key(), s) for x, s in b.scored]
    assert [x.key() for x, _ in a.scored] != [x.key() for x, _ in c.scored]


def test_mutations_per_child_fall_from_the_start_to_one():
    assert [mutations_at(g, 5, 5) for g in range(5)] == [5, 4, 3, 2, 1]
    for gens, start in ((240, 3), (10, 5), (2, 4)):
        sched = [mutations_at(g, gens, start) for g in range(gens)]
        assert sched[0] == start and sched[-1] == 1
        assert all(a >= b for a, b in zip(sched, sched[1:], strict=False))
    assert mutations_at(0, 1, 3) == 3 and mutations_at(0, 0, 3) == 3


def test_evolution_with_nothing_that_fits_raises_and_a_dry_space_terminates():
    with pytest.raises(ValueError, match="no candidate fits the budget"):
        _run_toy(seed=0, generations=2, fits=lambda c: False)
    # Only three candidates exist: the evolution scores each once and keeps going without new children.
    result, scored, _, calls, gens = _run_toy(
        seed=0,
        generations=5,
        new=lambda rng: Toy((rng.randrange(3), 0, 0, 0, 0, 0)),
        fits=lambda c: c[1:] == (0, 0, 0, 0, 0) and c[0] < 3,
        max_tries=20,
    )
    assert sorted(c.key() for c in scored) == ["0.0.0.0.0.0", "1.0.0.0.0.0", "2.0.0.0.0.0"]
    assert calls[0] == 3 and sum(calls) == 3  # no empty scoring call for a generation without children
    assert result.best_per_generation == [_toy_fitness(Toy((2, 0, 0, 0, 0, 0)))] * 6
    assert gens == [-1, 0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------------
# 5. The supernet's schedule, path sampling and the subnet scorer
# ---------------------------------------------------------------------------------------------------------


def test_cosine_lr_warms_up_then_decays_to_zero():
    total, warmup = 100, 0.1
    lrs = [cosine_lr(s, total, warmup) for s in range(total)]
    ramp = lrs[:10]
    assert all(a < b for a, b in zip(ramp, ramp[1:], strict=False)) and ramp[0] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)  # 1 at the end of the warm-up
    tail = lrs[10:]
    assert all(a >= b for a, b in zip(tail, tail[1:], strict=False))
    assert lrs[-1] < 0.01 and cosine_lr(total, total, warmup) == pytest.approx(0.0, abs=1e-12)
    assert lrs[55] == pytest.approx(0.5, abs=0.02)  # half-way through the cosine
    assert cosine_lr(0, 10, 0.0) == pytest.approx(1.0)  # no warm-up
    assert all(0 < cosine_lr(s, 7, 0.5) <= 1 for s in range(7))


def _hooks(elastic: ElasticEmbeddingBagCollection, space: BlockSpace, seed: int = 0) -> SupernetHooks:
    # warmup_steps 100 (full path probability 1 -> 0), total_steps 400
    hooks = SupernetHooks(space, CANDIDATES, None, seed, 100, 400, lr_warmup=0.1, grad_clip=1.0)
    hooks.elastic = elastic  # what on_model finds inside the DMP model
    return hooks


def test_supernet_paths_are_a_function_of_seed_and_step_and_the_full_path_fades():
    space = _space("full")
    _, elastic = _supernet(space)
    hooks, again, other = _hooks(elastic, space), _hooks(elastic, space), _hooks(elastic, space, seed=1)
    full = [tuple(range(max(0, j - 4), j)) for j in range(1, space.num_blocks + 1)]

    def is_full(c: Candidate) -> bool:
        return [b.dense_in for b in c.graph.blocks] == full and all(
            b.width == 32 and b.tokens == 8 and b.merge and b.fm for b in c.graph.blocks
        )

    paths = [hooks.sample(s) for s in range(200)]
    assert paths == [again.sample(s) for s in range(200)]  # no broadcast needed between ranks
    assert paths != [other.sample(s) for s in range(200)]
    assert is_full(paths[0]) and paths[0].dims == (16, 16, 16)  # p_full = 1 at step 0
    early = sum(is_full(p) for p in paths[:50])
    late = sum(is_full(p) for p in paths[50:100])
    assert early > late and early >= 25
    assert not any(is_full(p) for p in paths[100:])  # after the warm-up: random paths only
    assert len({p.dims for p in paths[100:]}) > 5
    for p in paths:
        assert all(check_block(b, j, space) == "" for j, b in enumerate(p.graph.blocks, start=1))


def _scorer(supernet: BlockNet, elastic: ElasticEmbeddingBagCollection, steps: int, seed: int = 0):
    """A scorer over slices looked up through the supernet's own tables."""
    state = {k: v for k, v in supernet.state_dict().items() if ".ebc." not in k}
    slices = []
    for part in (1, 2):
        dense, kjt = _inputs(seed=10 + part)
        with torch.no_grad():
            pooled = {k: v.clone() for k, v in elastic.ebc(kjt).to_dict().items()}
        labels = torch.bernoulli(torch.full((BATCH,), 0.4), generator=torch.Generator().manual_seed(part))
        slices.append((pooled, dense, labels, kjt))
    scorer = SubnetScorer(
        supernet.space,
        NUM_DENSE,
        elastic.table_configs(),
        state,
        slices[0][:3],
        slices[1][:3],
        finetune_steps=steps,
        finetune_lr=0.04,
        finetune_batch=8,
        seed=seed,
    )
    return scorer, slices


def test_the_scorer_without_fine_tuning_scores_the_supernets_own_logloss():
    space = _space("full")
    supernet, elastic = _supernet(space, seed=2)
    supernet.eval()
    scorer, slices = _scorer(supernet, elastic, steps=0)
    _, dense, labels, kjt = slices[1]
    for s in range(6):
        cand = random_candidate(random.Random(s), space, len(KEYS), CANDIDATES, None)
        supernet.set_graph(cand.graph)
        elastic.set_dims(list(cand.dims))
        with torch.no_grad():
            logloss = float(F.binary_cross_entropy_with_logits(supernet(dense, kjt), labels))
        got = scorer.score(cand)
        assert got["logloss"] == pytest.approx(logloss, abs=1e-5) and got["score"] == -got["logloss"]
        assert 0.0 <= got["auc"] <= 1.0
    assert scorer.evaluations == 6
    scorer.score(random_candidate(random.Random(0), space, len(KEYS), CANDIDATES, None))
    assert scorer.evaluations == 6  # memoised by key


def test_fine_tuning_the_final_layer_lowers_the_training_loss_and_is_deterministic():
    space = _space("small")
    supernet, elastic = _supernet(space, seed=3)
    cand = random_candidate(random.Random(1), space, len(KEYS), CANDIDATES, None)
    tuned, slices = _scorer(supernet, elastic, steps=200)
    tuned.val_slice = tuned.train_slice  # score on the rows it fine-tunes on
    untuned, _ = _scorer(supernet, elastic, steps=0)
    untuned.val_slice = untuned.train_slice
    assert tuned.score(cand)["logloss"] < untuned.score(cand)["logloss"]
    again, _ = _scorer(supernet, elastic, steps=200)
    again.val_slice = again.train_slice
    assert again.score(cand) == tuned.score(cand)


# ---------------------------------------------------------------------------------------------------------
# 6. The config section
# ---------------------------------------------------------------------------------------------------------


def test_the_default_config_passes():
    check_config(NASRecConfig())


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_blocks", 0),
        ("token_dim", 0),
        ("merger_tokens", 0),
        ("heads", 3),
        ("heads", 0),
        ("supernet_epochs", 0),
        ("supernet_lr", 0.0),
        ("lr_warmup", 1.0),
        ("lr_warmup", -0.1),
        ("grad_clip", -1.0),
        ("warmup_steps", -1),
        ("finetune_steps", -1),
        ("finetune_lr", 0.0),
        ("finetune_batch", 0),
        ("finetune_rows", 0),
        ("score_rows", 1),
        ("generations", -1),
        ("population", 1),
        ("sample_size", 0),
        ("sample_size", 129),
        ("children", 0),
        ("mutations", 0),
        ("top_k", 0),
        ("space", "medium"),
        ("widths", []),
        ("tokens", [16, 0]),
    ],
)
def test_out_of_range_config_values_name_their_key(key, value):
    cfg = NASRecConfig()
    setattr(cfg, key, value)
    with pytest.raises(ValueError) as e:
        check_config(cfg)
    assert str(e.value).startswith(f"search.nasrec.{key}:") and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# 7. The `blocks` architecture kind
# ---------------------------------------------------------------------------------------------------------


def test_blocks_architecture_saves_loads_and_trains_as_a_blocknet(tmp_path):
    schema, space = _schema(), _space("full")
    graph = random_graph(random.Random(4), space)
    arch = blocks_architecture(schema, [4, 16, 8], graph, space, "fp16")
    path = tmp_path / "architecture.yaml"
    arch.save(str(path))
    loaded = Architecture.load(str(path))
    assert loaded.kind == "blocks" and loaded.method == "nasrec"
    assert loaded.dims == [4, 16, 8] and all(t.data_type == "fp16" for t in loaded.tables)
    assert loaded.extra == {"space": space.to_dict(), "blocks": graph.to_dict()}
    kind = kind_of(loaded)
    assert kind.name == "blocks"
    train_arch, hooks = kind.training_form(loaded, str(path), schema)
    assert train_arch.dims == [4, 16, 8] and hooks.graph == graph and hooks.space == space
    ebc = EmbeddingBagCollection(tables=train_arch.to_ebc_configs())
    model = hooks.make_model(SimpleNamespace(schema=schema), ebc)
    assert isinstance(model, BlockNet) and model.graph == graph and model.space == space
    dense, kjt = _inputs()
    with torch.no_grad():
        assert model(dense, kjt).shape == (BATCH,)
    assert arch_bytes(loaded, "sgd") > 0


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda x: x["blocks"]["blocks"][1].update(width=999), "extra.blocks.blocks[1]: width 999"),
        (lambda x: x["blocks"]["blocks"][2].pop("fm"), "extra.blocks.blocks[2]: has keys"),
        (lambda x: x["blocks"]["blocks"][0].update(dense_in=[1]), "extra.blocks.blocks[0]: dense_in [1]"),
        (lambda x: x["blocks"]["blocks"].__setitem__(0, "fc"), "extra.blocks.blocks[0]: has keys"),
        (lambda x: x["blocks"].pop("final_sparse"), "extra.blocks: has keys ['blocks']"),
        (lambda x: x.__setitem__("blocks", "three fc blocks"), "extra.blocks: expected a non-empty list"),
        (lambda x: x["space"].update(heads=3), "extra.space:"),
        (lambda x: x.pop("space"), "needs extra.space and extra.blocks"),
    ],
)
def test_a_corrupted_blocks_architecture_is_a_one_line_error_naming_the_file(tmp_path, edit, problem):
    schema, space = _schema(), _space("full")
    arch = blocks_architecture(schema, [4, 16, 8], random_graph(random.Random(4), space), space)
    path = tmp_path / "architecture.yaml"
    arch.save(str(path))
    data = yaml.safe_load(path.read_text())
    edit(data["extra"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = Architecture.load(str(path))
    with pytest.raises(ValueError) as e:
        kind_of(loaded).training_form(loaded, str(path), schema)
    message = str(e.value)
    assert message.startswith(str(path)) and problem in message and "\n" not in message, message


def test_a_blocks_architecture_with_a_dropped_table_or_another_schema_is_refused(tmp_path):
    schema, space = _schema(), _space("full")
    graph = random_graph(random.Random(4), space)
    arch = blocks_architecture(schema, [4, 0, 8], graph, space)
    with pytest.raises(ValueError, match=r"src: tables \['t_c1'\] have dim 0"):
        kind_of(arch).training_form(arch, "src", schema)
    arch = blocks_architecture(schema, [4, 4, 8], graph, space)
    other = Schema(schema.dense_names, [SparseFeature(k, r + 1) for k, r in zip(KEYS, ROWS, strict=True)])
    with pytest.raises(ValueError, match="src"):
        kind_of(arch).training_form(arch, "src", other)


def test_candidates_differing_only_in_dead_parts_share_a_key():
    space = _space("full")
    rng = random.Random(11)
    found = 0
    for _ in range(200):
        cand = random_candidate(rng, space, len(KEYS), CANDIDATES, None)
        for j, (b, live) in enumerate(zip(cand.graph.blocks, liveness(cand.graph), strict=True)):
            if live.dense or live.sparse:
                continue
            # A block nothing reads: changing it changes the graph, not the key (nor the output).
            other = dataclasses.replace(b, width=[w for w in space.widths if w != b.width][0], fm=not b.fm)
            blocks = list(cand.graph.blocks)
            blocks[j] = other
            twin = Candidate(BlockGraph(tuple(blocks), cand.graph.final_sparse), cand.dims)
            assert twin.graph.key() != cand.graph.key() and twin.key() == cand.key()
            found += 1
        live_last = dataclasses.replace(
            cand.graph.blocks[-1], width=[w for w in space.widths if w != cand.graph.blocks[-1].width][0]
        )
        final_sparse = cand.graph.final_sparse
        changed = Candidate(BlockGraph(cand.graph.blocks[:-1] + (live_last,), final_sparse), cand.dims)
        assert changed.key() != cand.key()  # the last block is always live
        flipped = Candidate(BlockGraph(cand.graph.blocks, not final_sparse), cand.dims)
        assert flipped.key() != cand.key()  # what the final layer reads is part of the function
    assert found > 10


def test_split_by_cost_balances_the_ranks_and_is_deterministic():
    from torchrec_aes.search.nasrec.space import cost
    from torchrec_aes.search.nasrec.supernet import split_by_cost

    rng = random.Random(3)
    space = _space("full")
    cands = [random_candidate(rng, space, len(KEYS), CANDIDATES, None) for _ in range(40)]
    costs = [cost(c, space, len(KEYS), 3) for c in cands]
    assert all(c > 0 for c in costs) and len(set(costs)) > 30  # the proxy tells candidates apart
    owner = split_by_cost(costs, 2)
    assert owner == split_by_cost(costs, 2) and set(owner) == {0, 1}
    loads = [sum(c for c, o in zip(costs, owner, strict=True) if o == r) for r in (0, 1)]
    assert abs(loads[0] - loads[1]) <= max(costs)  # LPT: within one item
    # A wider block costs more.
    c0 = cands[0]
    wider = Candidate(
        BlockGraph((dataclasses.replace(c0.graph.blocks[0], width=max(space.widths)),) + c0.graph.blocks[1:]),
        c0.dims,
    )
    narrower = Candidate(
        BlockGraph((dataclasses.replace(c0.graph.blocks[0], width=min(space.widths)),) + c0.graph.blocks[1:]),
        c0.dims,
    )
    assert cost(wider, space, len(KEYS), 3) > cost(narrower, space, len(KEYS), 3)
