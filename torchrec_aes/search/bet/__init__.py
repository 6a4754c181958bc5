"""BET: budgeted embedding tables with a row-wise size per user and item (Qu et al., WSDM 2024).

Methods (CF data, `data.type=interactions`, `model.type=mf|lightgcn`):

- `bet`: the search. Pre-train the full-size model (every row at d_max) once. Then T iterations: sample m
  feasible actions (a size for every user and item, within the budget by construction), pick one
  (cycling `bet.schedule`: argmax of the predicted fitness, a random one, or the one nearest in the
  predictor's embedding space to the best action so far), reload the pre-trained weights, fine-tune under
  the action's prefix mask for E epochs with a fresh optimizer, and score it: fitness = validation
  quality / the full model's validation quality, quality = mean of Recall@K and NDCG@K over
  `train.ranking_k`. The (action, fitness) pair joins the replay set and the DeepSets predictor takes
  `bet.predictor_updates` single-sample steps. Finally the top-k actions are retrained from scratch,
  the best on validation is kept and its test metrics reported (test is read once, for that one).
- `bet_su`: the uniform baseline at the same budget (largest size, a multiple of 4, for every row).
- `bet_sr`: one random action of the sampler, retrained from scratch (no predictor, no fine-tuning).

Budget: `search.budget` in bytes (TorchRec's estimate of the bucket tables, optimizer state included) or
parameters (`search.count=params`, the paper's (1-c)·d_max·(|U|+|V|) is `"0.2 x uniform-128"` for c = 80%).
TorchRec's estimate is linear per row (`RowCost`), so the sampler can guarantee it: every row first gets
one size quantum (`bet.multiple`) reserved -- this fixes the paper's leak, where clamping sizes to >= 1
after flooring could exceed the budget -- and only the rest is distributed. The returned architecture
(one table per size bucket) is checked against TorchRec's estimate again before it is returned.

Ours (not fixed by the paper): sizes are multiples of 4; flooring leftovers go to the largest remainders
(the paper just floors, wasting up to one unit per row); after `bet.max_redraws` redraws a side's sizes
are clipped to d_max with the freed budget refilled; the predictor groups users and items into one set;
the final retraining trains the d_max tables under the mask (equivalent to the bucket tables for SGD and
Adagrad; row-wise Adagrad averages its per-row state over d_max columns instead of the row's size).

Artifacts: `architecture.yaml` holds the bucket tables (`t_user_d8`, ...) with `extra.row_dims` /
`extra.row_remap` naming `row_dims.npy` / `row_remap.npy` in the run directory; `RUN/bet/` holds the
pre-trained tables and the loop state (replay set + predictor, saved every iteration; a rerun resumes);
TensorBoard scalars go to `RUN/tb/bet`.

Example::

    result = bet_search(cfg, CFTask.load(cfg), budget, run_dir)  # SearchResult
    result.arch.tables                                           # bucket tables within the budget
    result.finalists                                             # top-k and SU, for the final pick
"""
