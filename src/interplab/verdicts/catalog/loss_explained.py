"""Loss and training compute recovered per feature read: SAE latents against PCA components.

Every statistic comes from `interplab.metrics.loss_curve`: features ranked by first-order
attribution on a ranking split, then on a disjoint scoring split the site gets
x_n = mean + sum over the top-n features of (f_i - mean_i) d_i (other features at their mean), and
frac(n) = (L_mean - L_n) / (L_mean - L_clean) from losses pooled over the scoring batches. The
SAE is the TopK SAE of the run's config (width = width_factor x d, k = min(sae_k, d)), refitted
with different seeds; PCA is full-rank PCA (one fit: it has no seed). Compute-equivalents use the
fitted L(C) = a C^-b + c of a ladder of models of one family trained at known compute, its rungs
measured on the same scoring batches and the law pinned at the model's own loss
(`interplab.metrics.compute`).
"""

from interplab.verdicts.crux import define

FAMILY = "loss-explained"
UNIT = ("SAE refits with different seeds (at least 3 at the cruxes scale), plus the sampling variance of their "
        "mean over the shared scoring batches (batch bootstrap, paired across methods)")
UNIT_COMPUTE = UNIT + " and over the ladder fit's parameters (draws from its covariance)"
FEW = ("planted readout toy (a linear readout trained on a planted site): 128 sparse features (uniform firing) in "
       "96 dims, the loss reads 8 of them (a few sparse features carry the loss; PCA's components mix them all)")
DENSE = ("planted readout toy: Gaussian codes in 72 dims with decaying variance, the loss reads the 16 "
         "highest-variance directions, with noisy targets (a dense subspace that PCA's own components span)")
FLAT = ("planted readout toy: an isotropic Gaussian site of 72 dims whose every direction the loss reads (each "
        "PCA component carries ~1/72 of it; a k-sparse code cannot rebuild the site)")
TWO = "planted readout toy: 2 sparse features in 2 dims, the loss reads both (each carries ~1/2 of it)"
LADDER = ", with its own ladder: the same readout trained 4 to 4096 steps"
STAT_FRAC = ("frac(SAE, {n}) - frac(PCA, {n}), frac(n) the fraction of the mean-ablation gap recovered with the n "
             "features of highest first-order attribution (ranking split) spliced in, every other at its mean, "
             "pooled over the scoring batches; per SAE refit, averaged. Computed only at sites with more than {n} "
             "dimensions (else PCA's n components are the whole activation)")

for n in (8, 64):
    define(
        id=f"lx-sae-pca-{n}", experiment="loss-explained", family=FAMILY,
        question=f"Reading the same number of features (n = {n}), do SAE latents recover more of the loss than "
                 "PCA components?",
        claim=f"the top-{n} SAE latents recover more of the loss than the top-{n} PCA components",
        statistic=STAT_FRAC.format(n=n), null="0", direction="higher", unit=UNIT,
        positive_control=FEW, negative_control=DENSE,
    )

define(
    id="lx-share", experiment="loss-explained", family=FAMILY,
    question="Does each SAE latent explain only a tiny fraction of what the model does (less than PCA's components)?",
    claim="the median SAE latent, read alone, recovers under 1% of the loss gap and less than the median PCA component",
    statistic="max(m_SAE - 0.01, m_SAE - m_PCA), m = the median over a uniform random sample of live features (firing "
              "on the ranking split) of the single-feature share (L_mean - L_i) / (L_mean - L_clean), x_i = mean + "
              "(f_i - mean_i) d_i; per SAE refit, averaged (< 0: both conditions hold)",
    null="0", direction="lower", unit=UNIT,
    positive_control=FLAT, negative_control=TWO,
)
define(
    id="lx-compute-64", experiment="loss-explained", family=FAMILY,
    question="Does a human-scale reading (n <= 64 features) recover a negligible fraction of the training compute?",
    claim="splicing in the top min(64, width) features recovers less than 1% of the model's training compute",
    statistic="log10(C_eq / C_model) of the pooled loss at n = min(64, width): C_eq solves L(C_eq) = L_n on the "
              "ladder's fitted L(C) = a C^-b + c (pinned at the model's own loss, a = L_model - c; rungs measured on "
              "the scoring batches), clamped to the ladder (a loss worse than its smallest rung counts at that rung: "
              "an upper bound; one better than the model counts as the model); SAE per refit, averaged; PCA (one "
              "fit) only where d > 64",
    null="-2 (1% of the training compute)", direction="lower", unit=UNIT_COMPUTE,
    positive_control=FLAT + LADDER + ": 64 SAE latents cannot rebuild the site",
    negative_control=FEW + LADDER + ": 64 latents hold its 8 features",
)
define(
    id="lx-compute-full", experiment="loss-explained", family=FAMILY,
    question="Does even the whole decomposition recover a negligible fraction of the training compute?",
    claim="splicing in the full reconstruction (every SAE latent; PCA sign-split top-k at the SAE's k) recovers less "
          "than 1% of the model's training compute",
    statistic="log10(C_eq / C_model) of the pooled loss with the decomposition's own reconstruction x_hat spliced in, "
              "C_eq on the ladder's fitted L(C) as in lx-compute-64; SAE per refit, averaged; PCA-top-k one fit",
    null="-2 (1% of the training compute)", direction="lower", unit=UNIT_COMPUTE,
    positive_control=FLAT + LADDER,
    negative_control=FEW + LADDER + ": its SAE rebuilds the site",
)
define(
    id="lx-truth", experiment="loss-explained", family=FAMILY + "-harness", kind="harness",
    question="Does the curve of the true features reach the whole loss at n = number of true features?",
    claim="reading every planted feature restores the clean loss",
    statistic="frac(truth, K) on a subject whose site is a linear function of K planted codes (x_K = x exactly)",
    null="0.999", direction="higher", unit="none: a property of the set-up (exact up to float error)",
    positive_control="not run (harness check)", negative_control="not run (harness check)",
)
