"""Stage noisy_classifier: train the noise-aware classifier p(y | x_t, t) that classifier guidance steers with.

Trained only when something asks for classifier guidance (sample.classifier_scale > 0, or any scale in
sweep.classifier_scales); otherwise it writes a small file saying it was not trained, without loading torch, so
that `dvc repro` stays cheap. The held-out accuracy at a few t goes to reports/metrics/noisy_classifier.json.
"""

from ddpm.config import Config
from ddpm.io import write_json
from ddpm.noisy_classifier_io import save_noisy_classifier, write_not_trained
from pipeline import paths
from pipeline.stage import log, progress_enabled, run


def wanted(cfg: Config) -> bool:
    return cfg.sample.classifier_scale > 0 or len(cfg.sweep.classifier_scales) > 0


def noisy_classifier(cfg: Config) -> None:
    if not wanted(cfg):
        write_not_trained(paths.NOISY_CLASSIFIER, "sample.classifier_scale is 0 and sweep.classifier_scales is "
                                                  "empty")
        write_json(paths.NOISY_CLASSIFIER_METRICS, {"noisy_classifier": {"trained": False}})
        log.info("no classifier guidance asked for: noisy classifier not trained")
        return
    from ddpm.data import load_split  # torch, only when it trains
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.noisy_classifier import accuracy_at, report_timesteps, train_noisy_classifier
    from ddpm.runtime import resolve_device

    train, test = load_split(paths.TRAIN_SPLIT), load_split(paths.TEST_SPLIT)
    device = resolve_device(cfg.runtime.device)
    diffusion = GaussianDiffusion.from_config(cfg)
    classes = int(max(train.labels.max(), test.labels.max())) + 1
    trained = train_noisy_classifier(train.images, train.labels, cfg.noisy_classifier, diffusion, num_classes=classes,
                                     seed=cfg.seed, device=device, progress=progress_enabled())
    accuracy = accuracy_at(trained.model, diffusion, test.images, test.labels,
                           report_timesteps(diffusion.num_timesteps), seed=cfg.seed, device=device)
    save_noisy_classifier(paths.NOISY_CLASSIFIER, trained.model.cpu(), cfg.diffusion, trained.epoch_losses)
    write_json(paths.NOISY_CLASSIFIER_METRICS, {"noisy_classifier": {
        "trained": True, "accuracy": {f"t_{t}": a for t, a in accuracy.items()}, "n_test": len(test),
        "n_train": len(train), "classes": classes, "epochs": len(trained.epoch_losses),
        "final_loss": trained.epoch_losses[-1]}})
    log.info("noisy classifier: held-out accuracy %s", ", ".join(f"{100 * a:.1f}% at t = {t}"
                                                                 for t, a in accuracy.items()))


if __name__ == "__main__":
    run(noisy_classifier)
