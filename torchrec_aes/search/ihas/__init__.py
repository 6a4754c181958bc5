"""iHAS (Yao et al., CIKM 2023, "Instance-wise Hierarchical Architecture Search for Deep Learning
Recommendation Models"): per-sample embedding dims found by Bernoulli gates, samples grouped by K-Means,
one model per group.

What the paper fixes (public facts): per-sample, per-field dims; a DLRM-style model; a Bernoulli gate layer
multiplied element-wise with the embeddings; stochastic gates in the search with a sparsity and a
bi-polarization regulariser; then deterministic gates, K-Means on the masked embeddings, and one model
per group retrained with its group's dims. No code or hyperparameters are public.

Ours (configurable in `search.ihas`, docs/methods/ihas.md "Where we deviate"):

1. Gates (`gates.py`): a controller MLP (`controller_hidden`) maps the direction (unit norm) of a sample's
   pooled embeddings, all fields at the base dim D = max(search.candidates), to one bounded logit per
   (field, block of 4 dims) (`gate_logit_bound`); training samples z ~ Bernoulli(sigmoid(logit)) with a
   straight-through gradient; loss = BCE + lambda_s x (the expected share of dims kept, fields weighted
   uniformly or by their rows: `sparsity_weights`) + lambda_p mean(pi (1 - pi)), lambda_s a signed dual
   variable steered to the budget's share of the full model (`sparsity_lr`, `dual`). `prefix` gates (default)
   keep the first k blocks, so a group's dim is a prefix of a TorchRec table's columns; `free` gates keep
   any subset (closer to the paper). The search model is an ordinary TorchRec model (EBC sharded by the
   planner, trained by the one `Trainer`).
2. Clustering (`cluster.py`): deterministic gates on `cluster_rows` training rows; for every candidate K
   of `num_groups` (one finalist each; K = 1 is a plain per-table architecture): mini-batch K-Means on the
   masked embeddings; group k's dim of field f = the mean active dims of its
   members, rounded to a multiple of 4 (0 drops the field for the group). Then `router_rounds` of hard EM
   on the router's model (relabel the sample by the router, refit it), so the groups are what the router
   serves.
3. Router (`router.py`, `models/grouped.py`): naive Bayes over per-id group frequencies of the fields with
   the most held-out information about the groups, at most `router_share` of the budget, in
   `router_data_type`. Its tables count toward the budget.
4. Budget: the groups' dims are scaled together (the largest scale whose architecture fits, with the
   router, by TorchRec's estimate; `fill_budget` lets it exceed 1 so the budget is used).
5. Deployment (`deployment`): `shared` (groups read prefixes of one table per field; bytes = per field the
   widest group) or `separate` (the paper's: per-group tables; bytes = the sum).
6. Retraining: the grouped model (router + tables + one head per group) is trained from scratch as one
   TorchRec model by the final pick, against the zero-cost baselines at the same bytes (each row goes
   through its routed group's head only, so each group learns from its rows only).

Artifacts: `architecture.yaml` of kind `grouped` (group tables, router tables, `extra.groups` with the
[K][F] dims and the deployment, `extra.router`), `router.pt`, `centroids.pt` and `test_groups.npy` (each
test row's group, for the report's per-group AUC) beside it.
"""
