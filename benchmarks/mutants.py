"""The mutants benchmarks/mutation.py runs: one exact edit each, with the fast tests that must kill it and why.

`old` must occur exactly once in `file` (else the mutant is stale: move it with the code). `tests` are pytest
arguments, as narrow as the test that kills the mutant, so that the whole list runs in minutes. A mutant that
no test can tell from the code (an equivalent mutant) does not belong here: see the notes at the end.
"""

from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    tests: str
    why: str


LIK, DIFF, SAM = "tests/test_likelihood.py", "tests/test_diffusion.py", "tests/test_sampling.py"
TD, SC, MD = "tests/test_training_details.py", "tests/test_sampler_calls.py", "tests/test_metric_details.py"
TT, CG, SN = "tests/test_train.py", "tests/test_classifier_guidance.py", "tests/test_snapshots.py"
M = Mutant
MUTANTS = [
    # ------------------------------------------------------------------ the bound and its densities
    M("kl_constant", "src/ddpm/losses.py", "0.5 * (-1.0 + logvar2", "0.5 * (logvar2",
      f"{LIK}::test_normal_kl_is_torch_distributions_kl", "the Gaussian KL loses its -1"),
    M("bin_width", "src/ddpm/losses.py", "BIN_HALF_WIDTH = 1.0 / 255.0", "BIN_HALF_WIDTH = 2.0 / 255.0",
      f"{LIK} -k discretized", "the decoder's bins are twice as wide"),
    M("decoder_edge", "src/ddpm/losses.py", "torch.where(x < -EDGE, torch.special.log_ndtr(upper)",
      "torch.where(x < -EDGE, _log_normal_mass(lower, upper)", f"{LIK} -k discretized",
      "the lowest bin no longer reaches -inf"),
    M("decoder_timestep", "src/ddpm/diffusion.py", "return torch.where(t == 0, decoder_nll, kl)",
      "return torch.where(t == 1, decoder_nll, kl)", f"{LIK} -k exact_gaussian", "the decoder term at t = 1"),
    M("learned_range_swapped", "src/ddpm/diffusion.py",
      "log_var = u * extract(self.log_betas, t, x_t) + (1.0 - u) * log_var_tilde",
      "log_var = (1.0 - u) * extract(self.log_betas, t, x_t) + u * log_var_tilde", f"{LIK} -k learned_range",
      "v = 1 means beta~ instead of beta"),
    M("hybrid_mean_not_detached", "src/ddpm/diffusion.py", "torch.cat([prediction.detach(), variance_values], dim=1)",
      "torch.cat([prediction, variance_values], dim=1)", f"{LIK} -k hybrid", "L_vlb trains the mean too"),
    M("vlb_not_times_T", "src/ddpm/diffusion.py", "vlb = self.num_timesteps * self.vb_terms_bpd",
      "vlb = self.vb_terms_bpd", f"{LIK} -k hybrid", "L_vlb is one term, not T of them"),
    M("importance_weight", "src/ddpm/timesteps.py", "(1.0 / (self.num_timesteps * probs[t]))", "(1.0 / (probs[t]))",
      f"{LIK} -k importance", "importance weights lose their 1/T"),
    M("importance_history_frozen", "src/ddpm/timesteps.py", "self.losses[step, :-1] = self.losses[step, 1:].clone()",
      "pass", f"{LIK} -k importance {TT}::test_resume_restores_the_importance_samplers_history",
      "the loss history never shifts"),
    M("importance_not_resumed", "src/ddpm/train.py", "        timesteps.load_state_dict(state[\"timesteps\"])\n", "",
      f"{TT}::test_resume_restores_the_importance_samplers_history", "resume forgets the importance history"),
    M("nll_stratum_length", "src/ddpm/likelihood.py", "kl = sum((length * term(t) for", "kl = sum((term(t) for",
      f"{LIK} -k stratified", "a stratified term stands for one timestep, not its stratum"),
    M("prior_log_variance", "src/ddpm/likelihood.py",
      "kl = normal_kl(mean, torch.log(variance), torch.zeros_like(mean), torch.zeros_like(mean))",
      "kl = normal_kl(mean, variance, torch.zeros_like(mean), torch.zeros_like(mean))", f"{LIK} -k prior",
      "the prior KL takes a variance for a log-variance"),
    # ------------------------------------------------------------------ schedules and the forward process
    M("linear_not_rescaled", "src/ddpm/schedules.py", "scale = 1000.0 / timesteps", "scale = 1.0",
      f"{DIFF}::test_linear_schedule_endpoints", "a short linear chain no longer ends at noise"),
    M("cosine_offset", "src/ddpm/schedules.py", "((t / timesteps + s) / (1 + s))", "((t / timesteps + s) / (1 - s))",
      f"{DIFF}::test_cosine_alphas_cumprod_matches_formula", "the cosine schedule's offset is wrong"),
    M("cosine_not_clipped", "src/ddpm/schedules.py", "return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)",
      "return 1.0 - abar[1:] / abar[:-1]", f"{DIFF}::test_cosine_alphas_cumprod_matches_formula",
      "beta_T = 1 is not clipped"),
    M("posterior_mean_coef", "src/ddpm/diffusion.py",
      "as_t((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod))",
      "as_t((1.0 - alphas_cumprod_prev) * alphas / (1.0 - alphas_cumprod))",
      f"{DIFF}::test_posterior_matches_bayes_rule", "mu~ takes alpha_t for sqrt(alpha_t)"),
    M("v_sign", "src/ddpm/diffusion.py", "return alpha * x_t - sigma * v", "return alpha * x_t + sigma * v",
      f"{DIFF}::test_parameterisations_round_trip", "x0 from v with the wrong sign"),
    M("min_snr_eps_weight", "src/ddpm/diffusion.py", "            return clipped / snr\n", "            return clipped\n",
      f"{DIFF}::test_min_snr_loss_is_min_snr_times_the_x0_error", "min-SNR's eps weight is the x0 weight"),
    # ------------------------------------------------------------------ the samplers
    M("respaced_chain_ignored", "src/ddpm/samplers.py",
      "chain = diffusion if len(kept) == diffusion.num_timesteps else diffusion.respaced(kept.tolist())",
      "chain = diffusion", "tests/test_respacing.py", "respaced DDPM steps on the full chain"),
    M("respaced_network_index", "src/ddpm/samplers.py", "chain_model = lambda x_t, i: model(x_t, kept[i])",
      "chain_model = lambda x_t, i: model(x_t, i)", "tests/test_respacing.py",
      "the network is told the respaced index, not the timestep"),
    M("ddpm_network_t", "src/ddpm/samplers.py", "diffusion.p_mean_variance(model(x_t, tt), x_t, tt,",
      "diffusion.p_mean_variance(model(x_t, (tt + 1).clamp(max=diffusion.num_timesteps - 1)), x_t, tt,",
      f"{SC} -k ddpm", "DDPM calls its network one timestep off"),
    M("ddpm_network_input", "src/ddpm/samplers.py", "diffusion.p_mean_variance(model(x_t, tt), x_t, tt,",
      "diffusion.p_mean_variance(model(x_t.clamp(-1, 1), tt), x_t, tt,", f"{SC} -k ddpm",
      "DDPM calls its network on a clipped x_t"),
    M("ddim_network_t", "src/ddpm/samplers.py",
      "predict_x0_eps(model(x_t, tt), x_t, tt, clip_denoised)\n    x0, eps = _score_guided",
      "predict_x0_eps(model(x_t, (tt - 1).clamp(min=0)), x_t, tt, clip_denoised)\n    x0, eps = _score_guided",
      f"{SC} -k ddim", "DDIM calls its network one timestep off"),
    M("ddim_network_input", "src/ddpm/samplers.py",
      "predict_x0_eps(model(x_t, tt), x_t, tt, clip_denoised)\n    x0, eps = _score_guided",
      "predict_x0_eps(model(x_t.clamp(-1, 1), tt), x_t, tt, clip_denoised)\n    x0, eps = _score_guided",
      f"{SC} -k ddim", "DDIM calls its network on a clipped x_t"),
    M("dpmpp_network_t", "src/ddpm/samplers.py",
      "predict_x0_eps(model(x_t, tt), x_t, tt, clip_denoised)\n    x0, _ = _score_guided",
      "predict_x0_eps(model(x_t, (tt - 1).clamp(min=0)), x_t, tt, clip_denoised)\n    x0, _ = _score_guided",
      f"{SC} -k dpmpp", "DPM-Solver++ calls its network one timestep off"),
    M("dpmpp_previous_t", "src/ddpm/samplers.py", "previous = (x0_hat, t)\n", "previous = (x0_hat, t_prev)\n",
      f"{SC} -k dpmpp", "DPM-Solver++'s second order takes the wrong step ratio"),
    M("ddim_sigma", "src/ddpm/samplers.py", "sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t))",
      "sigma = eta * math.sqrt((1 - abar_t) / (1 - abar_prev))", f"{DIFF} -k ddim_step", "DDIM's sigma inverted"),
    # ------------------------------------------------------------------ guidance
    M("classifier_ddpm_sigma", "src/ddpm/samplers.py", "mean = mean + torch.exp(log_var) * cond_fn(x_t, tt)",
      "mean = mean + torch.exp(0.5 * log_var) * cond_fn(x_t, tt)", CG, "DDPM's shift is sigma, not Sigma"),
    M("classifier_score_scale", "src/ddpm/samplers.py",
      "eps = eps - extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x_t) * cond_fn(x_t, t)",
      "eps = eps - extract(diffusion.sqrt_alphas_cumprod, t, x_t) * cond_fn(x_t, t)", CG,
      "the score form scales by sqrt(abar), not sqrt(1 - abar)"),
    M("classifier_dpmpp_unguided", "src/ddpm/samplers.py",
      "    x0, _ = _score_guided(diffusion, x_t, tt, eps, cond_fn) or (x0, eps)\n", "", CG,
      "DPM-Solver++ ignores classifier guidance"),
    M("cfg_variance_guided", "src/ddpm/guidance.py", "return torch.cat([guide(cond, uncond, guidance), variance], dim=1)",
      "return torch.cat([guide(cond, uncond, guidance), guide(variance, _, guidance)], dim=1)",
      "tests/test_conditional.py -k learned_variance", "the learned variance is extrapolated too"),
    M("cfg_weight", "src/ddpm/guidance.py", "return (1.0 + guidance) * cond - guidance * uncond",
      "return guidance * cond - guidance * uncond", "tests/test_conditional.py -k one_plus_w",
      "guidance is w cond - w uncond"),
    M("autoguide_swapped", "src/ddpm/guidance.py", "guide(ema(x_t, t, y), guide_ema(x_t, t, y), autoguidance, learned)",
      "guide(guide_ema(x_t, t, y), ema(x_t, t, y), autoguidance, learned)",
      "tests/test_autoguidance.py::test_the_sampler_model_is_one_plus_w_ema_minus_w_guide",
      "autoguidance extrapolates towards the guide"),
    M("drop_labels_inverted", "src/ddpm/guidance.py", "torch.where(uniform < p,", "torch.where(uniform > p,",
      "tests/test_conditional.py::test_labels_are_dropped_to_the_null_class_at_the_configured_rate",
      "labels are kept with probability p"),
    M("autoguide_swapped_on_load", "src/ddpm/checkpoints.py",
      'EMAWeights(_ema_unet(cfg, state["ema"], device),\n                      None if guide is None else '
      '_ema_unet(cfg, guide, device), cfg)',
      'EMAWeights(_ema_unet(cfg, guide if guide is not None else state["ema"], device),\n'
      '                      None if guide is None else _ema_unet(cfg, state["ema"], device), cfg)',
      f"{TD} -k loads_the_ema_and_its_guide", "loading swaps the EMA and autoguidance's guide"),
    M("later_batches_labels", "src/ddpm/sampling.py", "labels[batch.start:batch.stop]", "labels[:n]",
      f"{SC} -k labels_of_every_batch", "every batch samples the first batch's labels"),
    M("unet_scale_shift", "src/ddpm/unet.py", "h = self.norm2(h) * (1 + scale) + shift", "h = self.norm2(h) * scale + shift",
      "tests/test_unet.py", "scale-shift norm multiplies by scale, not 1 + scale"),
    # ------------------------------------------------------------------ the training loop
    M("ema_weight_swapped", "src/ddpm/train.py", "params, 1.0 - ema_beta(step, tc.ema_decay, gamma))",
      "params, ema_beta(step, tc.ema_decay, gamma))", f"{TD} -k ema", "the EMA moves to the new weights by beta"),
    M("constant_ema_inverted", "src/ddpm/ema.py", "    if gamma is None:\n        return decay",
      "    if gamma is None:\n        return 1.0 - decay", f"{TD} -k ema", "the constant EMA decays by 1 - decay"),
    M("hflip_axis", "src/ddpm/train.py", "x0.flip(3), x0)", "x0.flip(2), x0)", f"{TD} -k flip",
      "flips are vertical"),
    M("min_snr_dropped", "src/ddpm/train.py",
      "diffusion.training_loss(net, x0[part], t[part], noise[part], loss=tc.loss,\n"
      "                                                            min_snr_gamma=tc.min_snr_gamma)",
      "diffusion.training_loss(net, x0[part], t[part], noise[part], loss=tc.loss)", f"{TD} -k min_snr",
      "train() ignores min-SNR"),
    M("grad_clip_removed", "src/ddpm/train.py", "torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)",
      "pass", f"{TD} -k clip", "gradients are never clipped"),
    M("grad_clip_norm", "src/ddpm/train.py", "torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)",
      "torch.nn.utils.clip_grad_norm_(model.parameters(), 2 * tc.grad_clip)", f"{TD} -k clip",
      "gradients are clipped at twice the norm"),
    M("weight_decay_ignored", "src/ddpm/train.py", "build_optimizer(model.parameters(), tc.lr, tc.weight_decay)",
      "build_optimizer(model.parameters(), tc.lr, 0.0)", f"{TD} -k weight_decay", "weight decay is ignored"),
    M("optimizer_not_resumed", "src/ddpm/train.py", '        optimizer.load_state_dict(state["optimizer"])\n', "",
      f"{TD} -k resumed", "resume restarts Adam's moments"),
    M("flips_not_resumed", "src/ddpm/train.py", '        flip_gen.set_state(state["rng"]["flip"])\n', "",
      f"{TD} -k resumed", "resume restarts the flips' generator"),
    M("ema_not_resumed", "src/ddpm/train.py", '        ema.load_state_dict(state["ema"])\n', "",
      f"{TD} -k resumed", "resume restarts the EMA from the raw weights"),
    M("warmup_off_by_one", "src/ddpm/train.py", "return (step + 1) / warmup_steps", "return step / warmup_steps",
      f"{TT}::test_lr_schedule_warms_up_then_holds_or_anneals", "the first step has lr 0"),
    # ------------------------------------------------------------------ checkpoints
    M("snapshot_config_unchecked", "src/ddpm/snapshots.py",
      'other = [] if config == training_config else ["other parameters"]', "other = []",
      f"{TT}::test_a_snapshot_for_other_parameters_is_not_resumed", "a snapshot of other parameters resumes"),
    M("snapshot_origin_unchecked", "src/ddpm/snapshots.py", "        if run != self.origin:\n",
      "        if False:\n", f"{SN}::test_a_snapshot_without_a_recorded_origin_is_not_resumed",
      "a snapshot of another run's data or code resumes"),
    M("snapshot_checksum_unchecked", "src/ddpm/snapshots.py", "if not recorded or sha256_file(path) != recorded[0]:",
      "if not recorded:", f"{TT}::test_snapshots_rotate_and_a_damaged_one_is_skipped_for_the_one_before",
      "a corrupted snapshot is loaded"),
    M("snapshot_rotation", "src/ddpm/snapshots.py", "for old in own[self.keep:]:", "for old in own[self.keep + 1:]:",
      f"{TT}::test_snapshots_rotate_and_a_damaged_one_is_skipped_for_the_one_before", "one snapshot too many is kept"),
    M("rotation_of_other_runs", "src/ddpm/snapshots.py",
      "own = [p for p in self.paths() if p == path or self._recorded_identity(p) == (state[\"config\"], self.origin)]",
      "own = self.paths()", f"{SN}::test_rotation_leaves_other_runs_snapshots_alone",
      "rotation deletes other runs' snapshots"),
    M("checkpoint_format_unchecked", "src/ddpm/checkpoints.py",
      'if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:', "if not isinstance(state, dict):",
      f"{TT}::test_bad_checkpoints_fail_clearly", "a dict of another format is taken for a checkpoint"),
    # ------------------------------------------------------------------ metrics and the evaluation
    M("fid_second_covariance", "src/ddpm/evaluation/metrics.py", '{"mu": b.mu, "sigma": b.sigma}',
      '{"mu": b.mu, "sigma": a.sigma}', "tests/test_metrics.py -k frechet", "FID takes one set's covariance twice"),
    M("fid_biased_covariance", "src/ddpm/evaluation/metrics.py", "np.cov(features, rowvar=False)",
      "np.cov(features, rowvar=False, bias=True)", "tests/test_metrics.py -k frechet",
      "the covariance divides by N, not N - 1"),
    M("kid_mean_std_swapped", "src/ddpm/evaluation/metrics.py",
      "float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])",
      "float(out[KEY_METRIC_KID_STD]), float(out[KEY_METRIC_KID_MEAN])", "tests/test_metrics.py -k kid",
      "KID's mean and std change places"),
    M("kid_subset_size", "src/ddpm/evaluation/metrics.py", "kid_subset_size=subset_size,", "kid_subset_size=n,",
      "tests/test_metrics.py -k kid", "KID subsets are the whole smaller set"),
    M("pr_k_off_by_one", "src/ddpm/evaluation/metrics.py", "prc_neighborhood=k,", "prc_neighborhood=k + 1,",
      f"{MD} -k neighbourhood", "precision/recall use k + 1 neighbours"),
    M("pr_swapped", "src/ddpm/evaluation/metrics.py",
      "float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])",
      "float(out[KEY_METRIC_RECALL]), float(out[KEY_METRIC_PRECISION])",
      "tests/test_metrics.py::test_precision_and_recall_are_not_swapped", "precision and recall change places"),
    M("floor_not_cut", "src/ddpm/evaluation/scores.py", "**compare(floor[:n_floor], test, cfg, seed)",
      "**compare(floor, test, cfg, seed)", f"{MD} -k floor", "the data floor uses all its images, not the samples' N"),
    M("sweep_floor_not_cut", "src/ddpm/evaluation/scores.py", "gaussian_stats(ref.floor[feature][:n_floor])",
      "gaussian_stats(ref.floor[feature])", f"{MD} -k floor", "the sweep's floor uses all its images"),
    M("coverage_tv_halved", "src/ddpm/evaluation/metrics.py", "float(0.5 * np.abs(sample_share - data_share).sum())",
      "float(np.abs(sample_share - data_share).sum())", "tests/test_metrics.py -k coverage",
      "the total variation distance is not halved"),
    # ------------------------------------------------------------------ the report's trajectory
    M("trajectory_x0_of_the_step_before", "src/ddpm/trajectory.py",
      "    for i, step in enumerate(run):\n        if i in keep:",
      "    before = None\n    for i, step in enumerate(run):\n"
      "        step.x0_hat, before = (step.x0_hat if before is None else before), step.x0_hat\n        if i in keep:",
      f"{SC} -k trajectory", "each column shows the x0_hat of the step before"),
]

# Equivalent mutants, left out (no test can tell them from the code):
# - guidance.drop_labels `uniform < p` -> `uniform <= p`: the draws are continuous; they differ only on a draw of
#   exactly p (probability ~2^-24 per label).
# - samplers.ddim_step `max(1 - abar_prev - sigma**2, 0.0)` -> `1 - abar_prev - sigma**2`: sigma^2 <= 1 - abar_prev
#   for eta <= 1, so the max only guards round-off below 0.
# - train `clip_grad_norm_(...)` -> `clip_grad_norm_(..., foreach=True)`, `torch._foreach_lerp_` -> a loop of
#   `lerp_`: other kernels for the same arithmetic.
# None of the listed mutants survives today (docs/results.md, the mutation run); a new survivor gets a test
# that kills it, or its reason here.


def main() -> None:
    """Print the list (`python -m benchmarks.mutants`); `python -m benchmarks.mutation` runs it."""
    from benchmarks import harness

    results = harness.Results("mutants", harness.parser(__doc__).parse_args())
    for m in MUTANTS:
        print(f"{m.name:34s} {m.file:34s} {m.why}")
        results.add(mutant=m.name, file=m.file, tests=m.tests, why=m.why)


if __name__ == "__main__":
    main()
