"""AdaS&S (He Wei et al., arXiv 2411.07504): a one-shot supernet with adaptive sampling, then an RL search.

Stage 1, supernet (`supernet.py`): every table is held once at the largest candidate dim in an
`ElasticEmbeddingBagCollection` and trained by the one `Trainer` (planner -> DMP ->
`TrainPipelineSparseDist`, fused row-wise Adagrad) with sampling hooks, with no architecture parameters.
Each step samples an architecture (`AdaptiveSampler`):

* per table, a candidate k with p_f(k) = (1 - eps) softmax(z_f / tau) + eps / K, where z_f(k) is the EMA
  train loss of (f, k) relative to the table's mean EMA loss -- under-performing candidates are trained more;
* a fraction rho of the tables, drawn by importance mixed with uniform, use their sampled dim; the others
  use the largest. Importance of a table = EMA of the validation-loss increase when its embedding is
  zeroed, refreshed every `importance_every` steps;
* optionally ("sandwich"), every `sandwich_every` steps one step at all-smallest and one at all-largest.

Choices are a function of (seed, step) and of state that every rank updates with all-reduced values, so all
ranks set the same dims in every step without a broadcast.

After every supernet epoch, a fixed panel of subnets (all-smallest, all-largest, random ones) is scored on
the search's val slice; the supernet stops like the trainer (`train.patience` epochs without improvement,
at most `supernet_epochs`) and stage 2 uses its best epoch. Ours: without it, the planted quickstart's
supernet trained 4 epochs into heavy overfitting (train loss 0.57 -> 0.14) while the trainer's own best
epoch is the second, and the search ranked subnets by how they overfit.

Stage 2, search (`PolicySearch`): a factorised policy (one softmax per table over the candidates),
REINFORCE with a per-table EMA baseline and an entropy bonus. Each update samples J architectures and scores
them on a fixed validation slice with the supernet's weights (no retraining). The pooled embeddings of that
slice do not depend on the architecture (masks come after the lookup), so they are looked up once through
the sharded tables, gathered, and the search runs on rank 0 without collectives (`SupernetEvaluator`; with
DLRM it also computes the dense arch and every (table, candidate) projection of the slice once).
Reward per table (resource competition penalty): r_f = AUC - lambda * F * share_f * max(0, bytes/budget - 1),
share_f = bytes_f / bytes.

Then the budget step (`fit_to_budget`), from the policy's per-table argmax, with every decision judged
against the measured noise of the scores rather than a fixed AUC tolerance: shrink tables whose loss on
the val slice is not significant (DeLong's paired standard error at `confidence`); while over budget,
shrink the table with the least AUC loss per byte saved; while a grow fits, select the grow with the most
gain per byte on the even rows of the slice and keep it only if the odd rows show a significant gain (the
best of ~100 moves on one slice is mostly the luckiest noise; an independent half carries no selection
bias). A second, budget-filling variant keeps growing on the even rows alone. The result never exceeds
the budget (`Budget.fits`, TorchRec's storage estimate).

Rows (ours; `search.adass.rows`, by default whenever no per-table architecture fits the budget): the
searched tables are each feature's frequency blocks (`models/frequency.py`), every block held at the
largest candidate, the blocks of a feature summed before the model sees them (`models.ctr.FeatureGroups`);
each block's options are the candidates and "shared" (its ids share one row; scored as the block zeroed).
The result is a `frequency` architecture. With blocks the budget step ranks moves lazily (a move's score is
recomputed only when it reaches the top): a few hundred (block, option) moves made the exact step take
minutes (132 s instead of 10 s on criteo_sample; over 20 minutes on the planted quickstart data).

Final pick (shared with every method, `search/finalists.py`): both variants and the zero-cost baselines
at the same budget (same-memory uniform, power_rule, uniform in fp16, and on CTR data mde and hashed) are
trained from scratch (`search.pick`: by default both variants fully, the baselines by successive halving
among themselves), and the best on validation is kept, so a supernet whose ranking does not carry over to
retrained models cannot make the result worse than what a user gets for free (on validation).

Our details (not in the paper): the loss-relative temperature, the importance measure and its refresh, the
sandwich default, the supernet's early stopping, the advantage normalisation, the free-shrink pass,
any-candidate moves, select-then-confirm halves and standard errors of the budget step, the budget-filling
variant, the AUC on a fixed slice, the final pick among finalists with the baselines.

DLRM projections: our first design was one projection per (table, candidate); `shared_projection=true`
uses one per table whose first d input columns serve candidate d. On small planted data (30k rows, 6 fields,
`tests/unit/test_adass.py`) per-candidate projections of rarely sampled candidates are undertrained, so a
signal-free table's dim changes the val AUC by ~1e-3 and the search got all signal-free tables to the
smallest dim in 1 of 6 seeds; with shared projections in 6 of 6 (measured with the earlier fixed
tolerances).

Checkpoints (with `train.checkpoint` and a run directory), so a killed run resumes:

* `checkpoints/adass/supernet/` -- DCP checkpoint of the supernet and sampler state after every epoch
  (deleted once the evaluator below is written: it is the run's largest file and no longer needed; with
  frequency blocks `supernet_blocks/` and `supernet_blocks_eval.pt`);
* `checkpoints/adass/supernet_eval.pt` -- the trained supernet's evaluator (dense weights + the gathered
  validation embeddings), written when stage 1 finishes; with it, a rerun skips stage 1 entirely;
* `checkpoints/adass/rl_state.pt` -- policy, optimizer, baseline and history every `checkpoint_every`
  updates and at the end.

Both `.pt` files are saved with a manifest (`<file>.json`: the run's identity and the file's sha256,
`search/state.py`): a rerun with another seed, data, training/model config, candidates or supernet
settings (and, for the RL state, another budget or RL settings) is refused in one line naming what
differs; a damaged file is said so and its phase runs again. Raising `rl_updates` continues the RL.

World size: 2 ranks give each step twice the examples of 1 process (per-rank batches), so the supernet's
weights and hence the found architecture can differ from a 1-process run with the same seed; within a run
every rank returns the same architecture (rank 0's, broadcast).
"""
