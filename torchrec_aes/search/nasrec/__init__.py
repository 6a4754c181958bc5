"""NASRec (Zhang et al., WWW 2023, "NASRec: Weight Sharing Neural Architecture Search for Recommender
Systems"): a supernet over whole block-graph models, trained once with weight sharing; regularized
evolution over its subnets; the best trained from scratch.

What the paper (and its public code) fixes, our defaults in `search.nasrec` (`config.py`): N = 7 blocks
with dense connectivity; per block one dense op ({fc, sigmoid gating, sum, dot product}) and one sparse op
({EFC, attention}) ("full"; "small" = {fc, dot | EFC}); widths {16..1024}, tokens {16, 32, 48, 64}; the
dense -> sparse (8 tokens) and sparse -> dense (FM) mergers; any-path sampling, a full-path warm-up whose
probability falls linearly over 15,000 steps; Adagrad 0.12 with a cosine schedule and 10% warm-up;
scoring = fine-tune the final layer 500 steps at 0.04, then validation log loss; aging evolution with
population 128, sample 64, 8 children, 240 generations, top-2 retrained.

Ours (docs/methods/nasrec.md, "Where we deviate"):

1. Embedding dims are searched with the blocks (`search_dims`): one dim per table from
   `search.candidates`, mutated like any block field, under the budget (the paper fixes 16). Every table
   is projected to `token_dim` for the sparse ops.
2. The supernet's embeddings are a sharded TorchRec EBC at d_max behind the elastic wrapper
   (`supernet/elastic.py`); a smaller dim is a prefix. Prefix masks of widths and tokens are exact:
   LayerNorm over the active prefix and attention over the active tokens, so a subnet built standalone
   with weights cut from the supernet computes the supernet's output (`models/blocks.py`).
3. Scoring runs on fixed slices looked up once through the sharded tables (`finetune_rows` training rows,
   `score_rows` validation rows) on every rank; the fine-tuning is a logistic regression on the blocks'
   output. Each rank scores its share of every generation's children; results are gathered, so the
   evolution is the same on every rank and gets faster with more processes.
4. Budget: a candidate's tables are counted by TorchRec's storage estimate; one over the budget is never
   scored or returned (random candidates are shrunk table by table until they fit). The dense part is
   not counted, as for every other kind (docs/usage.md, "Budgets").
5. Final: the top-k are trained from scratch with the run's `train` settings by the shared final pick,
   with the zero-cost baselines (DLRM/DCN per `model.type`) at the same budget.

Artifacts: `architecture.yaml` of kind `blocks` (tables + `extra.space` + `extra.blocks`); the report
draws the block graph (`blocks.png`) and the evolution's best score per generation (`evolution.png`).
"""
