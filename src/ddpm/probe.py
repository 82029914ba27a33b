"""Quality while training: the EMA's samples scored by the domain classifier every `train.eval_every` steps."""

from __future__ import annotations

import numpy as np
import torch

from ddpm.config.groups import SampleConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.classifier import DomainClassifier, predict
from ddpm.evaluation.metrics import confident_share, frechet_distance, gaussian_stats
from ddpm.sampling import generate


class TrainingProbe:
    """Quality while training: a fixed-seed batch of EMA samples scored in the domain space.

    Draws `num_samples` images with DPM-Solver++(2M) in `steps` steps and reports their FID
    against the held-out split (classifier features) and the share classified with probability
    >= `confidence`. Small N biases FID upwards: the curve is for comparing steps of one run.
    """

    def __init__(self, classifier: DomainClassifier, test_images: np.ndarray, *, num_samples: int, steps: int,
                 confidence: float, seed: int = 0):
        self.classifier, self.confidence = classifier, confidence
        self.test_stats = gaussian_stats(predict(classifier, test_images).features)
        # the EMA alone (autoguidance 0): the curve is the EMA's quality, and before train.autoguide_at no guide exists
        self.sample_cfg = SampleConfig(num_samples=num_samples, sampler="dpmpp_2m", steps=steps,
                                       batch_size=num_samples, seed=seed, autoguidance=0.0)

    def __call__(self, model: torch.nn.Module, diffusion: GaussianDiffusion, device: torch.device) -> dict[str, float]:
        images = generate(model, diffusion, self.sample_cfg, device=device, progress=False)
        scored = predict(self.classifier, images)
        return {"fid": frechet_distance(gaussian_stats(scored.features), self.test_stats),
                "confident": confident_share(scored.probs, self.confidence)}
